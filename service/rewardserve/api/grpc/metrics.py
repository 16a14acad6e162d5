"""gRPC request metrics: the twin of HTTP's ``RequestMetrics`` middleware (api/http/middleware.py).

Every RPC is counted in ``rewardserve_requests_total{transport="grpc", endpoint=<full method>,
code=<status name>}`` when it ends, and refusals in ``rewardserve_rejected_total{reason}`` with the
same reasons as HTTP. Unary calls are also timed in ``rewardserve_request_duration_seconds``; a
stream's lifetime (a health Watch lasts as long as its client) is not a request latency, so streams
are counted but not timed.

This interceptor must come first in the server's list, before ``status.ErrorInterceptor``: the first
interceptor wraps the outermost layer, so it sees the status code after exceptions were mapped.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from rewardserve.metrics import Metrics

# Status codes that mean "refused" and their reason label: the same words HTTP uses for its
# statuses (401 auth, 403 forbidden, 422 validation, 429 overloaded, 503 unavailable, 504 timeout).
REJECTED_REASONS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: "auth",
    grpc.StatusCode.PERMISSION_DENIED: "forbidden",
    grpc.StatusCode.INVALID_ARGUMENT: "validation",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
}

Behavior = Callable[..., Any]


class RequestMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every RPC by method and final status code."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            # Unknown method: grpc answers UNIMPLEMENTED. Counted under one label, as HTTP counts
            # unknown paths, so a scanner cannot grow the label set without bound.
            self._record("unmatched", grpc.StatusCode.UNIMPLEMENTED, None)
            return handler
        method: str = details.method
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, True),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, False),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, False),
        )
        for attr, wrap, timed in kinds:
            behavior = getattr(handler, attr)
            if behavior is not None:
                return wrap(
                    self._wrap(behavior, method, timed, streaming=handler.response_streaming),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler  # pragma: no cover - grpc handlers always have one of the four

    def _wrap(self, behavior: Behavior, method: str, timed: bool, *, streaming: bool) -> Behavior:
        """``behavior`` with a done-callback that records the RPC once it has ended, whichever way:
        returned, aborted, raised, cancelled by the client or past its deadline."""

        def record_on_done(context: grpc.aio.ServicerContext[Any, Any]) -> list[BaseException]:
            """Arms the record. The returned list receives the exception that ended the handler,
            if any: grpc answers those without setting ``context.code()``."""
            t0 = time.perf_counter()
            ended_by: list[BaseException] = []

            def done(_: object) -> None:
                elapsed = time.perf_counter() - t0 if timed else None
                self._record(method, _final_code(context, ended_by), elapsed)

            context.add_done_callback(done)
            return ended_by

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            ended_by = record_on_done(context)
            try:
                return await behavior(request, context)
            except BaseException as exc:  # recorded, then re-raised untouched
                ended_by.append(exc)
                raise

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            ended_by = record_on_done(context)
            try:
                responses = behavior(request, context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:  # a handler that writes with context.write() and returns None
                    await responses
            except BaseException as exc:
                ended_by.append(exc)
                raise

        return stream if streaming else unary

    def _record(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        m = self.metrics
        m.requests.labels("grpc", method, code.name).inc()
        if seconds is not None:
            m.request_duration.labels("grpc", method).observe(seconds)
        reason = REJECTED_REASONS.get(code)
        if reason is not None:
            m.rejected.labels(reason).inc()


def _final_code(
    context: grpc.aio.ServicerContext[Any, Any], ended_by: list[BaseException]
) -> grpc.StatusCode:
    """The status the client got. ``code()`` holds what an abort or ``set_code`` chose. Unset: a
    cancelled handler means the client's deadline passed (DEADLINE_EXCEEDED, as the client sees it)
    or the client went away (CANCELLED); another exception escaping the handler is UNKNOWN."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    exc = ended_by[0] if ended_by else None
    if isinstance(exc, asyncio.CancelledError) or context.cancelled():
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK
