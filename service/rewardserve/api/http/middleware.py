"""ASGI middleware around the HTTP app: the body size limit and request metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from rewardserve.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, before FastAPI parses anything.

    A declared Content-Length is checked up front. A chunked body (no length) is read here, up to the
    limit, then replayed to the app: the JSON parser needs all of it anyway, and an error raised from
    inside the app's receive would be turned into a 400 by FastAPI.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._reject(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # client went away: let the app see the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"error": f"request body is larger than {self.max_bytes} bytes", "type": "validation"}
        await JSONResponse(body, status_code=413)(scope, receive, send)


# What each refused status means, for rewardserve_rejected_total{reason}.
_REJECTED = {
    401: "auth",
    413: "too_large",
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
