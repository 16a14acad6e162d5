"""One table from exceptions to what a client sees, shared by HTTP and gRPC.

Clients get a short message and a type, never a traceback, a file path or an address: anything not
listed here is an internal error with a generic message (the details go to the server log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rewardserve.errors import InputError, ModelNotFound, NotReady
from rewardserve.scoring.batcher import DeadlineExceeded, Draining, Overloaded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorInfo:
    http_status: int
    grpc_code: str  # grpc.StatusCode member name; kept as text so this module needs no grpc import
    type: str  # validation | overloaded | unavailable | auth | timeout | not_found | internal
    message: str
    retry_after_s: float | None = None


class AuthError(Exception):
    """Missing or wrong credentials."""


def classify(exc: BaseException) -> ErrorInfo:
    """What the client is told about ``exc``."""
    if isinstance(exc, InputError):
        return ErrorInfo(422, "INVALID_ARGUMENT", "validation", str(exc))
    if isinstance(exc, ModelNotFound):
        return ErrorInfo(404, "NOT_FOUND", "not_found", str(exc))
    if isinstance(exc, Overloaded):
        retry = max(1.0, float(getattr(exc, "retry_after_s", 1.0)))
        return ErrorInfo(429, "RESOURCE_EXHAUSTED", "overloaded", "server is at capacity; retry later", retry)
    if isinstance(exc, Draining):
        return ErrorInfo(503, "UNAVAILABLE", "unavailable", "server is draining; retry on another replica")
    if isinstance(exc, NotReady):
        return ErrorInfo(503, "UNAVAILABLE", "unavailable", str(exc) or "server is not ready")
    if isinstance(exc, DeadlineExceeded | TimeoutError):
        return ErrorInfo(504, "DEADLINE_EXCEEDED", "timeout", "deadline exceeded before it was scored")
    if isinstance(exc, AuthError):
        return ErrorInfo(401, "UNAUTHENTICATED", "auth", str(exc) or "authentication required")
    log.error("internal error", exc_info=exc)
    return ErrorInfo(500, "INTERNAL", "internal", "internal error; see the server log")
