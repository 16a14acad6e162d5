"""What a call to a rewardserve server can fail with, the same for HTTP and gRPC.

Each error says whether retrying can help (``retryable``), whether the endpoint itself looks gone
(``endpoint_down``: the load balancer stops sending it work for a cool-off period) and how long the
server asked the client to wait (``retry_after_s``, from HTTP ``Retry-After`` or the gRPC
``retry-after`` trailer).
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "DeadlineExceeded",
    "InvalidRequest",
    "ModelNotFound",
    "NotSupported",
    "Overloaded",
    "RewardServeError",
    "ServerError",
    "Unavailable",
]


class RewardServeError(Exception):
    """Base class of every error the client raises for a failed call."""

    retryable: bool = False
    endpoint_down: bool = False

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        status: int | str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        """The server URL that answered (or failed to)."""
        self.status = status
        """HTTP status code, or gRPC status code name."""
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f" [{self.endpoint}]" if self.endpoint else ""
        status = f" ({self.status})" if self.status is not None else ""
        return f"{self.message}{status}{where}"


class InvalidRequest(RewardServeError):
    """The server refused the inputs (HTTP 400/413/422, INVALID_ARGUMENT): fix the request."""


class ModelNotFound(RewardServeError):
    """The named model is not served there (HTTP 404, NOT_FOUND)."""


class AuthError(RewardServeError):
    """Missing or wrong credentials (HTTP 401/403, UNAUTHENTICATED/PERMISSION_DENIED)."""


class NotSupported(RewardServeError):
    """The server has no such endpoint, e.g. generate on a scoring-only server (UNIMPLEMENTED)."""


class Overloaded(RewardServeError):
    """The server's queue is full (HTTP 429, RESOURCE_EXHAUSTED). Retried after Retry-After."""

    retryable = True


class Unavailable(RewardServeError):
    """The server cannot take work now: unreachable, loading or draining (HTTP 502/503,
    UNAVAILABLE). Retried, on another endpoint when there is one."""

    retryable = True
    endpoint_down = True


class DeadlineExceeded(RewardServeError, TimeoutError):
    """The call's timeout passed (client timeout, HTTP 504, DEADLINE_EXCEEDED). Not retried: the
    server may still be working on it, and sending it again would double the load."""


class ServerError(RewardServeError):
    """The server failed (HTTP 500, INTERNAL) or answered something the client cannot read."""
