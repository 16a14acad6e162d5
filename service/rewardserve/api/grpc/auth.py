"""API keys on the gRPC door: the ``authorization`` metadata (``Bearer KEY``) checked by the same
Authenticator as HTTP (api/auth.py) before a handler runs. Health and reflection stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from rewardserve.api.auth import Authenticator
from rewardserve.api.grpc.status import abort
from rewardserve.errors import AuthError


def _refuse_unary(exc: AuthError) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, exc)

    return handler


def _refuse_stream(exc: AuthError) -> Callable[..., Any]:
    async def handler(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await abort(context, exc)
        yield  # pragma: no cover - makes this an async generator, as the method expects

    return handler


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """UNAUTHENTICATED without a valid key, PERMISSION_DENIED for a scoring key on an admin method."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        header = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
        try:
            self.auth.check_grpc(details.method, header)
        except AuthError as exc:
            handler = await continuation(details)
            if handler is None:
                return handler
            kwargs = {
                "request_deserializer": handler.request_deserializer,
                "response_serializer": handler.response_serializer,
            }
            if handler.unary_unary is not None:
                return grpc.unary_unary_rpc_method_handler(_refuse_unary(exc), **kwargs)
            if handler.unary_stream is not None:
                return grpc.unary_stream_rpc_method_handler(_refuse_stream(exc), **kwargs)
            if handler.stream_unary is not None:
                return grpc.stream_unary_rpc_method_handler(_refuse_unary(exc), **kwargs)
            return grpc.stream_stream_rpc_method_handler(_refuse_stream(exc), **kwargs)
        return await continuation(details)
