"""ASGI middleware around the HTTP app: API keys, reading the body (size, time, JSON depth), and
request metrics."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse

from rewardserve.api.auth import Authenticator
from rewardserve.errors import AuthError, Forbidden
from rewardserve.metrics import Metrics
from rewardserve.naming import setting_name

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "type": kind}, status_code=status, headers=headers)


class Authenticate:
    """ASGI middleware: the API-key check (api/auth.py) before anything else reads the request.
    The caller is left in ``scope["state"]["caller"]`` for handlers that log who did what."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), None)
        try:
            caller = self.auth.check_http(scope["path"], header.decode("latin-1") if header else None)
        except Forbidden as exc:
            await _error(403, exc.message, "forbidden")(scope, receive, send)
            return
        except AuthError as exc:
            response = _error(401, exc.message, "auth", {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


class BodyReader:
    """ASGI middleware: the whole body is read here, then replayed to the app, so that before FastAPI
    parses anything:

    * headers over ``max_header_bytes`` are refused (431);
    * a body over ``max_bytes`` is refused (413), a declared Content-Length up front;
    * a body that does not arrive within ``timeout_s`` is refused (408): a client trickling bytes
      cannot hold a connection and a buffer for ever;
    * JSON nested deeper than ``max_depth`` is refused (422) from a scan of the raw bytes: Python's
      parser recurses per level, and 100,000 levels end in a RecursionError.

    (The JSON parser needs all of the body anyway; an error raised from inside the app's receive
    would be turned into a 400 by FastAPI.)
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout_s: float, max_depth: int, max_header_bytes: int
    ) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers", [])
        head_bytes = sum(len(k) + len(v) + 4 for k, v in raw_headers)
        if head_bytes > self.max_header_bytes:  # h11 bounds an incomplete head; this a complete one
            text = (
                f"request headers are larger than {self.max_header_bytes} bytes: raise "
                f"{setting_name('max_header_bytes')}"
            )
            await _error(431, text, "validation", {"Connection": "close"})(scope, receive, send)
            return
        headers = dict(raw_headers)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        await self.app(scope, _replay([], message, receive), send)
                        return  # client went away: let the app see the disconnect
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_bytes:
                        await self._too_large(scope, receive, send)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            message_text = (
                f"the request body did not arrive within {self.timeout_s:g}s; raise "
                f"{setting_name('request_read_timeout_s')} for slow links"
            )
            response = _error(408, message_text, "timeout", {"Connection": "close"})
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        json_part = body
        header_length = headers.get(b"inference-header-content-length")  # KServe binary extension
        if header_length is not None and header_length.isdigit():
            json_part = body[: int(header_length)]
        depth = await _depth(json_part)
        if depth > self.max_depth:
            text = (
                f"JSON nested {depth} levels deep; the limit is {self.max_depth}: raise "
                f"{setting_name('max_json_depth')}"
            )
            await _error(422, text, "validation")(scope, receive, send)
            return
        await self.app(scope, _replay([body], None, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        text = f"request body is larger than {self.max_bytes} bytes: raise {setting_name('max_body_bytes')}"
        await _error(413, text, "validation")(scope, receive, send)


def _replay(bodies: list[bytes], first: Message | None, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": b, "more_body": False} for b in bodies]
    if first is not None:
        pending.append(first)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OTHER = bytes(b for b in range(256) if b not in b"[]{}")
_SCAN_IN_THREAD = 1 << 20  # bodies above 1 MiB are scanned off the event loop


def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays/objects in JSON text (strings skipped; an invalid body gives some
    number, and the parser then reports what is wrong with it)."""
    brackets = _STRING.sub(b"", body).translate(None, _OTHER)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    # '[' 0x5b, '{' 0x7b open; ']' 0x5d, '}' 0x7d close.
    delta = np.where((steps == 0x5B) | (steps == 0x7B), 1, -1).astype(np.int32)
    return int(np.cumsum(delta).max())


async def _depth(body: bytes) -> int:
    if len(body) > _SCAN_IN_THREAD:
        return await asyncio.to_thread(json_depth, body)
    return json_depth(body)


# What each refused status means, for rewardserve_rejected_total{reason}.
_REJECTED = {
    401: "auth",
    403: "forbidden",
    408: "timeout",
    499: "cancelled",
    413: "too_large",
    431: "too_large",
    422: "validation",
    429: "overloaded",
    503: "unavailable",
    504: "timeout",
}


class RequestMetrics:
    """ASGI middleware: count and time every request by endpoint (the route template, so ids in
    paths never become label values) and status code; count refusals by reason."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            m = self.metrics
            m.requests.labels("http", endpoint, str(status)).inc()
            m.request_duration.labels("http", endpoint).observe(time.perf_counter() - t0)
            if status in _REJECTED:
                m.rejected.labels(_REJECTED[status]).inc()
