"""gRPC status mapping: exceptions from our handlers become status codes through the same table as
HTTP (api/errors.classify), so no handler formats an error and no traceback or path reaches a client."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import grpc.aio

from rewardserve.api.errors import ErrorInfo, classify
from rewardserve.errors import DeadlineExceeded


def error_info(exc: BaseException) -> tuple[grpc.StatusCode, ErrorInfo]:
    """The status code and client-safe message for ``exc`` (the shared classify table)."""
    info = classify(exc)
    return grpc.StatusCode[info.grpc_code], info


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the RPC with the status ``exc`` maps to. RESOURCE_EXHAUSTED carries a ``retry-after``
    trailer (seconds), as HTTP's 429 carries Retry-After."""
    code, info = error_info(exc)
    trailers: tuple[tuple[str, str], ...] = ()
    if info.retry_after_s:
        trailers = (("retry-after", str(math.ceil(info.retry_after_s))),)
    await context.abort(code, info.message, trailing_metadata=trailers)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def time_left(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The client's deadline as a timeout for the scoring service (None: the server's default).
    An already-expired call is refused here, before any tokenizing."""
    remaining: float | None = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the client's deadline passed before the call started")
    return remaining


Behavior = Callable[..., Any]


def _map_unary(behavior: Behavior) -> Behavior:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise  # already a status: the handler aborted on purpose
        except Exception as exc:
            await abort(context, exc)

    return handler


def _map_stream(behavior: Behavior) -> Behavior:
    async def handler(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in behavior(requests, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps exceptions from our handlers to status codes (validation -> INVALID_ARGUMENT, overload ->
    RESOURCE_EXHAUSTED, not ready/draining -> UNAVAILABLE, deadline -> DEADLINE_EXCEEDED, auth ->
    UNAUTHENTICATED, unknown model -> NOT_FOUND, anything else -> INTERNAL with a generic message).
    Only methods of ``services`` are mapped; health and reflection handle their own errors."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._prefixes = tuple(f"/{name}/" for name in services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _map_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _map_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no unary-stream / stream-unary methods in our protos
