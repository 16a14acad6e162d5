"""Score against a running rewardserve over HTTP (``POST /v1/score``), many requests at once.

A small async client of its own (the trainer-facing client library is a separate concern): at most
``concurrency`` requests in flight; 429 and 503 are waited out (``Retry-After`` when the server gives
one, else exponential backoff) and retried, as are 504s and dropped connections, up to
``max_retries`` times per request. A 422 that names one input (``inputs[i]: ...``) fails that row only
and the rest of the request is sent again; a 413 splits the request in two.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Sequence
from typing import Any

import httpx

from rewardserve.bulk.job import Failed, OnProgress
from rewardserve.errors import BulkError
from rewardserve.scoring.types import ScoreInput, ScoreOutput

log = logging.getLogger(__name__)
_INPUT_INDEX = re.compile(r"^inputs\[(\d+)\]: (.*)$", re.S)
_RETRY_STATUS = {429, 503, 504}


def wire_input(inp: ScoreInput) -> dict[str, Any]:
    """One input as the /v1/score body spells it."""
    if inp.messages is not None:
        return {"messages": [{"role": m.role, "content": m.content} for m in inp.messages]}
    if inp.text is not None:
        return {"text": inp.text}
    return {"prompt": inp.prompt, "response": inp.response}


class ServerScorer:
    """Scores through a server; use as a context manager (it owns an event loop and a connection pool)."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        concurrency: int = 8,
        batch_size: int = 64,
        max_retries: int = 10,
        timeout_s: float = 300.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._model = model
        self._name = model or ""
        self._objectives: tuple[str, ...] = ()
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        # One loop for the scorer's whole life, so the pooled connections survive between shards.
        self._runner = asyncio.Runner()
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    def __enter__(self) -> ServerScorer:
        self._runner.run(self._open())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._runner.run(self._client.aclose())
        self._runner.close()

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def objectives(self) -> tuple[str, ...]:
        return self._objectives

    async def _open(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, limits=limits)
        self._slots = asyncio.Semaphore(self.concurrency)
        # A wrong URL should fail in seconds (few retries on the liveness probe); a server that is up
        # but still loading its model (503) gets the same patience as any request.
        live = await self._request("GET", "/health/live", None, retries=min(2, self.max_retries))
        if live.status_code != 200:
            raise BulkError(
                f"{self.url}/health/live answered {live.status_code}: is this a rewardserve server?"
            )
        r = await self._request("GET", "/v1/models", None)
        if r.status_code != 200:
            raise BulkError(f"{self.url}/v1/models answered {r.status_code}: {_error_text(r)}")
        models = r.json().get("data", [])
        chosen = [m for m in models if self._model in (None, m.get("id"))]
        if not chosen:
            served = [m.get("id") for m in models]
            raise BulkError(
                f"the server at {self.url} does not serve model {self._model!r}; it serves {served}"
            )
        self._name = str(chosen[0]["id"])
        self._objectives = tuple(chosen[0].get("objectives") or ())

    def score(
        self, inputs: Sequence[ScoreInput], *, truncate: bool, on_progress: OnProgress | None = None
    ) -> list[ScoreOutput | Failed]:
        return self._runner.run(self._score_all(list(inputs), truncate, on_progress))

    async def _score_all(
        self, inputs: list[ScoreInput], truncate: bool, on_progress: OnProgress | None
    ) -> list[ScoreOutput | Failed]:
        out: list[ScoreOutput | Failed | None] = [None] * len(inputs)

        async def one_request(indices: list[int]) -> None:
            await self._score_batch(inputs, indices, truncate, out)
            if on_progress is not None:
                tokens = sum(o.tokens for o in (out[i] for i in indices) if isinstance(o, ScoreOutput))
                on_progress(len(indices), tokens)

        batches = [
            list(range(s, min(s + self.batch_size, len(inputs))))
            for s in range(0, len(inputs), self.batch_size)
        ]
        await asyncio.gather(*(one_request(b) for b in batches))
        return [o for o in out if o is not None]

    async def _score_batch(
        self,
        inputs: list[ScoreInput],
        pending: list[int],
        truncate: bool,
        out: list[ScoreOutput | Failed | None],
    ) -> None:
        """Score ``pending`` into ``out``; refused rows get Failed, the others are sent again."""
        while pending:
            body: dict[str, Any] = {"inputs": [wire_input(inputs[i]) for i in pending], "truncate": truncate}
            if self._model is not None:
                body["model"] = self._model
            r = await self._request("POST", "/v1/score", body)
            if r.status_code == 200:
                data = r.json()
                for i, score, detail in zip(pending, data["scores"], data["details"], strict=True):
                    out[i] = self._output(score, detail)
                return
            if r.status_code == 413 and len(pending) > 1:
                half = len(pending) // 2
                await self._score_batch(inputs, pending[:half], truncate, out)
                pending = pending[half:]
                continue
            if r.status_code not in (413, 422):
                raise BulkError(
                    f"{self.url}/v1/score answered {r.status_code}: {_error_text(r)}", exit_code=1
                )
            message = _error_text(r)
            m = _INPUT_INDEX.match(message)
            if m is not None and int(m.group(1)) < len(pending):
                out[pending[int(m.group(1))]] = Failed(m.group(2))
                pending = pending[: int(m.group(1))] + pending[int(m.group(1)) + 1 :]
            elif len(pending) == 1:
                reason = "row is larger than the server's body limit" if r.status_code == 413 else message
                out[pending[0]] = Failed(reason)
                return
            else:  # a refusal that names no input: find the culprit by halving
                half = len(pending) // 2
                await self._score_batch(inputs, pending[:half], truncate, out)
                pending = pending[half:]

    def _output(self, score: float, detail: dict[str, Any]) -> ScoreOutput:
        objectives = detail.get("objectives") or {}
        values = (
            tuple(float(objectives[k]) for k in self._objectives) if self._objectives else (float(score),)
        )
        return ScoreOutput(
            score=float(score),
            values=values,
            tokens=int(detail["tokens"]),
            truncated=bool(detail["truncated"]),
        )

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, retries: int | None = None
    ) -> httpx.Response:
        """One call, retried through overload, drain, timeouts and dropped connections."""
        assert self._client is not None and self._slots is not None
        retries = self.max_retries if retries is None else retries
        last = ""
        for attempt in range(retries + 1):
            wait: float | None = None
            try:
                async with self._slots:
                    r = await self._client.request(method, path, json=body)
                if r.status_code not in _RETRY_STATUS:
                    return r
                last = f"{r.status_code} {_error_text(r)}"
                wait = _retry_after(r)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt == retries:
                break
            if wait is None:
                wait = min(self.max_backoff_s, 0.25 * 2**attempt)
            wait = min(self.max_backoff_s, wait) * (1 + 0.1 * random.random())  # jitter: no herd
            log.debug("%s %s: %s; retry %d in %.1fs", method, path, last, attempt + 1, wait)
            await asyncio.sleep(wait)
        raise BulkError(
            f"{self.url}{path} still failing after {retries} retries ({last}); the finished shards "
            "are kept: rerun the same command to resume",
            exit_code=1,
        )


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_text(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return r.text[:200]
    return str(data.get("error", data)) if isinstance(data, dict) else str(data)[:200]
