"""What the sync and async clients share: settings, URL parsing, request bodies, chunking.

Only the waiting differs between the two clients (threads and ``time.sleep`` vs. tasks and
``asyncio.sleep``), so everything that decides WHAT to send lives here.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from rewardserve.client import errors
from rewardserve.client.balance import RetryEvent, RetryPolicy
from rewardserve.client.types import (
    Input,
    Message,
    ModelRef,
    Pair,
    input_to_wire,
    message_to_wire,
    pair_to_wire,
)

JSON = dict[str, Any]
E = TypeVar("E", bound=errors.RewardServeError)

HTTP_SCHEMES = ("http", "https")
GRPC_SCHEMES = ("grpc", "grpcs")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for https:// and grpcs:// servers with a private CA (``ca``), and the client's own
    certificate and key when the server requires them (mutual TLS)."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca is not None else None)
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key is not None else None)
        return context

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(ca, key, cert) bytes, as grpc.ssl_channel_credentials takes them."""
        return tuple(Path(p).read_bytes() if p is not None else None for p in (self.ca, self.key, self.cert))  # type: ignore[return-value]


def auth_headers(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str] | None:
    """``headers`` plus ``Authorization: Bearer api_key`` (sent as gRPC metadata too)."""
    if api_key is None:
        return dict(headers) if headers is not None else None
    return {**(headers or {}), "Authorization": f"Bearer {api_key}"}


@dataclass(frozen=True)
class ClientConfig:
    timeout: float = 120.0
    connect_timeout: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    cooloff_s: float = 10.0
    max_inputs_per_request: int = 256
    max_concurrency: int = 8
    headers: Mapping[str, str] | None = None
    on_retry: Callable[[RetryEvent], None] | None = None
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be > 0 seconds")
        if self.cooloff_s < 0:
            raise ValueError("cooloff_s must be >= 0")
        if self.max_inputs_per_request < 2:
            raise ValueError("max_inputs_per_request must be >= 2 (a compared pair is 2 inputs)")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """Server URLs, checked: ``http(s)://host:port[/prefix]`` or ``grpc(s)://host:port``."""
    items = [urls] if isinstance(urls, str) else list(urls)
    if not items:
        raise ValueError("give at least one server URL, e.g. 'http://localhost:8000'")
    out = []
    for url in items:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in HTTP_SCHEMES + GRPC_SCHEMES or not rest.strip("/"):
            raise ValueError(
                f"bad server URL {url!r}: use http://HOST:PORT (HTTP API) or grpc://HOST:PORT (gRPC API)"
            )
        if scheme in GRPC_SCHEMES and "/" in rest.rstrip("/"):
            raise ValueError(f"bad server URL {url!r}: a gRPC URL is grpc://HOST:PORT, without a path")
        out.append(url.rstrip("/"))
    return out


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` bounds splitting ``n`` items into runs of at most ``size``."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def model_label(model: ModelRef) -> str:
    """The ``model`` an empty answer reports: the name asked for, "adhoc" for weights."""
    if isinstance(model, Mapping):
        return "adhoc"
    return model or ""


def model_fields(model: ModelRef, reduce: str | None, step_reduce: str | None) -> JSON:
    """The request fields that choose the reward source and its options (only those given)."""
    body: JSON = {}
    if isinstance(model, Mapping):
        body["model"] = {str(k): float(v) for k, v in model.items()}
    elif model:
        body["model"] = model
    if reduce is not None:
        body["reduce"] = reduce
    if step_reduce is not None:
        body["step_reduce"] = step_reduce
    return body


def score_bodies(
    inputs: Sequence[Input],
    *,
    model: ModelRef,
    truncate: bool,
    chunk_size: int,
    reduce: str | None = None,
    step_reduce: str | None = None,
    advantage: str | None = None,
) -> list[tuple[tuple[int, int], JSON]]:
    if isinstance(inputs, str | Mapping) or (isinstance(inputs, tuple) and _is_one_pair(inputs)):
        raise TypeError("score() takes a list of inputs; wrap a single input in a list")
    wire = [input_to_wire(x, i) for i, x in enumerate(inputs)]
    # Advantages are group statistics: one request must hold every sample of the call.
    size = (len(wire) or 1) if advantage else chunk_size
    out = []
    for start, end in chunks(len(wire), size):
        body: JSON = {"inputs": wire[start:end], "truncate": truncate}
        body |= model_fields(model, reduce, step_reduce)
        if advantage:
            body["advantage"] = advantage
        out.append(((start, end), body))
    return out


def _is_one_pair(x: Sequence[Any]) -> bool:
    return len(x) == 2 and all(isinstance(p, str) for p in x)


def compare_bodies(
    pairs: Sequence[Pair],
    *,
    model: ModelRef,
    truncate: bool,
    chunk_size: int,
    reduce: str | None = None,
    step_reduce: str | None = None,
) -> list[tuple[tuple[int, int], JSON]]:
    wire = [pair_to_wire(p, i) for i, p in enumerate(pairs)]
    out = []
    # A pair is two inputs on the server, so a chunk holds half as many pairs.
    for start, end in chunks(len(wire), max(1, chunk_size // 2)):
        body: JSON = {"pairs": wire[start:end], "truncate": truncate}
        body |= model_fields(model, reduce, step_reduce)
        out.append(((start, end), body))
    return out


def generate_body(
    prompts: Sequence[str | Sequence[Message]],
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int | None,
    seed: int | None,
    stop: str | Sequence[str] | None,
    logprobs: bool,
    extra: Mapping[str, Any],
) -> JSON:
    """``/v1/generate`` body: text prompts, or conversations rendered by the policy's template."""
    if isinstance(prompts, str):
        raise TypeError("prompts is a list; wrap a single prompt in a list")
    texts = [p for p in prompts if isinstance(p, str)]
    body: JSON
    if len(texts) == len(prompts):
        body = {"prompts": texts}
    elif not texts:
        body = {
            "messages": [
                [message_to_wire(cast(Message, m), f"prompts[{i}]") for m in chat]
                for i, chat in enumerate(prompts)
            ]
        }
    else:
        raise TypeError("prompts must be all strings or all conversations (lists of messages), not a mix")
    body.update(n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, logprobs=logprobs)
    if top_k is not None:
        body["top_k"] = top_k
    if seed is not None:
        body["seed"] = seed
    if stop is not None:
        body["stop"] = stop if isinstance(stop, str) else list(stop)
    body.update(extra)
    return body


def in_chunk(exc: E, span: tuple[int, int], total: int) -> E:
    """An error from one chunk, with the server's chunk-relative indices (``inputs[3]``) turned into
    indices of the caller's whole list."""
    start, _ = span
    if span == (0, total) or start == 0:
        return exc
    message = _INDEX.sub(lambda m: f"{m.group(1)}[{int(m.group(2)) + start}]", exc.message)
    return type(exc)(message, endpoint=exc.endpoint, status=exc.status, retry_after_s=exc.retry_after_s)


_INDEX = re.compile(r"\b(inputs|pairs)\[(\d+)\]")
