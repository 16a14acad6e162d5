# Generated from client/aio.py by client/_unasync.py (make unasync): edit aio.py, not this file.
"""``RewardClient``: the blocking client (HTTP or gRPC, one server or several).

Generated from client/aio.py (the asyncio one, the source of truth) by client/_unasync.py:
edit aio.py and run ``make unasync``; a test fails when this file is stale.
Request building and the retry policy live in _core.py and balance.py, the waiting for parallel
chunks in _concurrency.py.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from rewardserve.client import _core
from rewardserve.client._concurrency import FanOut
from rewardserve.client._core import JSON
from rewardserve.client.balance import EndpointPool, EndpointState, RetryEvent, RetryPolicy
from rewardserve.client.errors import RewardServeError
from rewardserve.client.types import (
    CompareResult,
    GenerateResponse,
    Input,
    Message,
    ModelInfo,
    ModelRef,
    Pair,
    RolloutResponse,
    ScoreResult,
)

log = logging.getLogger("rewardserve.client")

R = TypeVar("R")


class _Transport(Protocol):
    url: str

    def call(self, op: str, body: JSON | None, timeout: float) -> JSON: ...

    def close(self) -> None: ...


def _transport(url: str, config: _core.ClientConfig) -> _Transport:
    if url.startswith(_core.GRPC_SCHEMES):
        from rewardserve.client._grpc import GrpcTransport

        return GrpcTransport(url, headers=config.headers, tls=config.tls)
    from rewardserve.client._http import HttpTransport

    return HttpTransport(
        url,
        timeout=config.timeout,
        connect_timeout=config.connect_timeout,
        headers=config.headers,
        max_connections=max(16, 2 * config.max_concurrency),
        tls=config.tls,
    )


class RewardClient:
    """Blocking client for a rewardserve server or several.

    >>> with RewardClient("http://localhost:8000") as rm:
    ...     rewards = rm.score([("What is 2+2?", "4"), "raw text"])

    ``urls`` is one URL or a list: ``http(s)://HOST:PORT`` for the HTTP API, ``grpc(s)://HOST:PORT``
    for the native gRPC API (same methods, same numbers). With several, calls are spread round-robin
    over the healthy ones; a server that fails is skipped for ``cooloff_s`` seconds.

    Each try is bounded by ``timeout`` seconds (``connect_timeout`` to connect). Retries follow one
    set of rules, ``retry`` (a ``RetryPolicy``): overload (429 / RESOURCE_EXHAUSTED) and
    unavailability (502, 503 / UNAVAILABLE, connection failures) are retried, with exponential
    backoff and jitter and at least the server's Retry-After, on another server when there is one.
    Timeouts (504 / DEADLINE_EXCEEDED, a read that ran out of time) are never retried: the call may
    still be running on the server, and sending it again would double its load. Invalid requests,
    missing models and server errors are not retried either. Inputs beyond
    ``max_inputs_per_request`` are sent as several requests, up to ``max_concurrency`` at once, and
    the answers put back in order. ``on_retry`` is called before each retry (logging, metrics).
    ``api_key`` is sent as ``Authorization: Bearer KEY`` (HTTP header, gRPC metadata). ``tls_ca``
    verifies https/grpcs servers against a private CA; ``tls_cert`` and ``tls_key`` are the client's
    certificate for servers that require one (mutual TLS).
    Thread-safe: threads may share one client.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        cooloff_s: float = 10.0,
        max_inputs_per_request: int = 256,
        max_concurrency: int = 8,
        headers: Mapping[str, str] | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        api_key: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.config = _core.ClientConfig(
            timeout=timeout,
            connect_timeout=connect_timeout,
            retry=retry or RetryPolicy(),
            cooloff_s=cooloff_s,
            max_inputs_per_request=max_inputs_per_request,
            max_concurrency=max_concurrency,
            headers=_core.auth_headers(headers, api_key),
            on_retry=on_retry,
            tls=_core.TlsFiles(tls_ca, tls_cert, tls_key) if tls_ca or tls_cert else None,
        )
        self.urls = _core.parse_urls(urls)
        transports = [_transport(u, self.config) for u in self.urls]
        self._pool: EndpointPool[_Transport] = EndpointPool(self.urls, transports, cooloff_s=cooloff_s)
        self._rng = random.Random()
        self._fan_out = FanOut(max_concurrency)

    # --- public API ------------------------------------------------------------------------------

    def score(
        self,
        inputs: Sequence[Input],
        *,
        model: ModelRef = None,
        truncate: bool = False,
        reduce: str | None = None,
        step_reduce: str | None = None,
        timeout: float | None = None,
    ) -> list[float | None]:
        """Rewards of ``inputs`` (see ``rewardserve.client.Input``), in order, from ``model``: a
        served name, ad hoc weights ``{"helpful": 1.0, "safety": 0.5}``, or None (the default).
        ``reduce`` (ensembles: mean | min | conservative) and ``step_reduce`` (process reward
        models: min | last | mean | prod) choose what the score is. None where the reward source
        failed for that input (a verifier's timeout, a judge's unparsed answer: see
        ``score_details``), never a silent 0."""
        result = self.score_details(
            inputs, model=model, truncate=truncate, reduce=reduce, step_reduce=step_reduce, timeout=timeout
        )
        return result.scores

    def score_details(
        self,
        inputs: Sequence[Input],
        *,
        model: ModelRef = None,
        truncate: bool = False,
        reduce: str | None = None,
        step_reduce: str | None = None,
        advantage: str | None = None,
        timeout: float | None = None,
    ) -> ScoreResult:
        """Rewards plus per-input details (tokens, truncated, objectives, status, mask, extras; an
        ensemble's members, mean, std, min, conservative; a composite's components; raw;
        step_scores; with ``advantage="grpo" | "drgrpo" | "rloo"`` each input's advantage within its
        ``group``) and token usage. With ``advantage``, the inputs go in one request."""
        bodies = _core.score_bodies(
            inputs,
            model=model,
            truncate=truncate,
            chunk_size=self.config.max_inputs_per_request,
            reduce=reduce,
            step_reduce=step_reduce,
            advantage=advantage,
        )
        if not bodies:
            return ScoreResult(model=_core.model_label(model), scores=[], details=[], prompt_tokens=0)
        parts = self._chunked("score", bodies, len(inputs), timeout, ScoreResult.from_wire)
        return ScoreResult.merge(parts)

    def compare(
        self,
        pairs: Sequence[Pair],
        *,
        model: ModelRef = None,
        truncate: bool = False,
        reduce: str | None = None,
        step_reduce: str | None = None,
        timeout: float | None = None,
    ) -> CompareResult:
        """P(a ≻ b) for each ``(prompt, a, b)`` (Bradley-Terry: sigmoid of the reward margin)."""
        bodies = _core.compare_bodies(
            pairs,
            model=model,
            truncate=truncate,
            chunk_size=self.config.max_inputs_per_request,
            reduce=reduce,
            step_reduce=step_reduce,
        )
        if not bodies:
            return CompareResult(model=_core.model_label(model), probabilities=[], margins=[])
        parts = self._chunked("compare", bodies, len(pairs), timeout, CompareResult.from_wire)
        return CompareResult.merge(parts)

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The reward models (and the policy generator, over HTTP) the server serves."""
        body = self._call("models", None, timeout)
        return [ModelInfo.from_wire(card) for card in body.get("data", [])]

    def generate(
        self,
        prompts: Sequence[str | Sequence[Message]],
        *,
        n: int = 1,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        logprobs: bool = False,
        model: str | None = None,
        timeout: float | None = None,
        **extra: Any,
    ) -> GenerateResponse:
        """``n`` policy samples per prompt (text prompts or conversations). Needs a server started
        with ``--generator``; ``extra`` goes into the request as is (``top_logprobs``, ``ignore_eos``)."""
        body = _core.generate_body(
            prompts,
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            logprobs=logprobs,
            extra=extra,
        )
        if model:
            body["model"] = model
        return cast(GenerateResponse, self._call("generate", body, timeout))

    def rollout(
        self,
        prompts: Sequence[str | Sequence[Message]],
        *,
        n: int = 1,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        logprobs: bool = False,
        model: str | None = None,
        generator: str | None = None,
        truncate: bool = False,
        advantages: bool = False,
        timeout: float | None = None,
        **extra: Any,
    ) -> RolloutResponse:
        """Generate ``n`` samples per prompt and score each with reward model ``model`` in one round
        trip; per-prompt mean/std, and GRPO advantages when ``advantages``."""
        body = _core.generate_body(
            prompts,
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            logprobs=logprobs,
            extra=extra,
        )
        body.update(truncate=truncate, advantages=advantages)
        if model:
            body["model"] = model
        if generator:
            body["generator"] = generator
        return cast(RolloutResponse, self._call("rollout", body, timeout))

    @property
    def endpoints(self) -> list[EndpointState]:
        """Each server and whether the balancer currently sends it work."""
        return self._pool.states()

    def close(self) -> None:
        self._fan_out.close()
        for t in self._pool.endpoints:
            t.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- machinery -------------------------------------------------------------------------------

    def _chunked(
        self,
        op: str,
        bodies: list[tuple[tuple[int, int], JSON]],
        total: int,
        timeout: float | None,
        parse: Callable[[JSON], R],
    ) -> list[R]:
        def one(item: tuple[tuple[int, int], JSON]) -> R:
            span, body = item
            try:
                return parse(self._call(op, body, timeout))
            except RewardServeError as exc:
                raise _core.in_chunk(exc, span, total) from exc

        if len(bodies) == 1:
            return [one(bodies[0])]
        return self._fan_out.map(one, bodies)

    def _call(self, op: str, body: JSON | None, timeout: float | None) -> JSON:
        """One request, retried and failed over per the policy."""
        policy = self.config.retry
        limit = timeout if timeout is not None else self.config.timeout
        attempt = 0
        while True:
            attempt += 1
            i = self._pool.pick()
            transport = self._pool.endpoints[i]
            try:
                result = transport.call(op, body, limit)
            except RewardServeError as exc:
                if exc.retryable:  # out of rotation for a while, even if this was the last try
                    self._pool.failed(i, exc, policy.max_retry_after_s)
                if not exc.retryable or attempt >= policy.max_attempts:
                    raise
                delay = 0.0 if self._pool.any_healthy() else policy.delay(attempt, exc, self._rng)
                self._report(RetryEvent(transport.url, attempt, exc, delay))
                time.sleep(delay)
                continue
            self._pool.succeeded(i)
            return result

    def _report(self, event: RetryEvent) -> None:
        log.info(
            "rewardserve %s failed (%s), try %d; retrying in %.2fs",
            event.endpoint,
            event.error,
            event.attempt,
            event.delay_s,
        )
        if self.config.on_retry is not None:
            self.config.on_retry(event)
