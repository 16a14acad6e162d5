"""One table from exceptions to what a client sees, shared by HTTP and gRPC.

Clients get a short message and a type, never a traceback, a file path or an address: anything not
in the table is an internal error with a generic message (the details go to the server log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from rewardserve.errors import (
    AuthError,
    DeadlineExceeded,
    Draining,
    Forbidden,
    InvalidRequest,
    ModelNotFound,
    NonFiniteReward,
    NotReady,
    NotSupported,
    Overloaded,
    RewardServeError,
    Unavailable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorInfo:
    http_status: int
    grpc_code: str  # grpc.StatusCode member name; kept as text so this module needs no grpc import
    type: str  # validation | overloaded | unavailable | auth | forbidden | timeout | not_found | internal
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class _Rule:
    http_status: int
    grpc_code: str
    type: str
    # The client-safe message: fixed text where the exception's own could say too much or too little.
    message: Callable[[BaseException], str]


def _own(default: str) -> Callable[[BaseException], str]:
    return lambda exc: str(exc) or default


_CAPACITY = "server is at capacity; retry later"
_DRAINING = "server is draining; retry on another replica"
_LATE = "deadline exceeded before it was scored"


def _fixed(text: str) -> Callable[[BaseException], str]:
    return lambda _exc: text


# Most specific first: the first class ``exc`` is an instance of decides. TimeoutError stands for
# asyncio/anyio timeouts raised inside a handler; it is not ours, but it means the same as a deadline.
_TABLE: tuple[tuple[type[BaseException], _Rule], ...] = (
    (InvalidRequest, _Rule(422, "INVALID_ARGUMENT", "validation", _own("invalid request"))),
    (ModelNotFound, _Rule(404, "NOT_FOUND", "not_found", _own("no such model"))),
    (Forbidden, _Rule(403, "PERMISSION_DENIED", "forbidden", _own("not allowed"))),
    (AuthError, _Rule(401, "UNAUTHENTICATED", "auth", _own("authentication required"))),
    (NotSupported, _Rule(501, "UNIMPLEMENTED", "not_found", _own("not supported by this server"))),
    (Overloaded, _Rule(429, "RESOURCE_EXHAUSTED", "overloaded", _fixed(_CAPACITY))),
    (Draining, _Rule(503, "UNAVAILABLE", "unavailable", _fixed(_DRAINING))),
    (NotReady, _Rule(503, "UNAVAILABLE", "unavailable", _own("server is not ready"))),
    (Unavailable, _Rule(503, "UNAVAILABLE", "unavailable", _own("server is not ready"))),
    (DeadlineExceeded, _Rule(504, "DEADLINE_EXCEEDED", "timeout", _fixed(_LATE))),
    (TimeoutError, _Rule(504, "DEADLINE_EXCEEDED", "timeout", _fixed(_LATE))),
    # A server fault, but one with a precise, path-free message that names the input.
    (NonFiniteReward, _Rule(500, "INTERNAL", "internal", _own("non-finite reward"))),
)

#: The exception classes the table maps (for transports that register handlers by class).
MAPPED: tuple[type[Exception], ...] = (RewardServeError, TimeoutError)


def classify(exc: BaseException) -> ErrorInfo:
    """What the client is told about ``exc``."""
    for cls, rule in _TABLE:
        if isinstance(exc, cls):
            retry = None
            if isinstance(exc, Overloaded):  # 429 always carries Retry-After, at least one second
                retry = max(1.0, float(exc.retry_after_s or 1.0))
            return ErrorInfo(rule.http_status, rule.grpc_code, rule.type, rule.message(exc), retry)
    log.error("internal error", exc_info=exc)
    return ErrorInfo(500, "INTERNAL", "internal", "internal error; see the server log")
