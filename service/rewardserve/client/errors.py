"""What a call to a rewardserve server can fail with, the same for HTTP and gRPC.

The classes live in ``rewardserve.errors`` (one hierarchy for the whole package, shared with the
server); this module is the client's public name for them. Each error says whether retrying can help
(``retryable``), whether the endpoint itself looks gone (``endpoint_down``: the load balancer stops
sending it work for a cool-off period) and how long the server asked the client to wait
(``retry_after_s``, from HTTP ``Retry-After`` or the gRPC ``retry-after`` trailer).
"""

from __future__ import annotations

from rewardserve.errors import (
    AuthError,
    DeadlineExceeded,
    Forbidden,
    InvalidRequest,
    ModelNotFound,
    NotSupported,
    Overloaded,
    RewardServeError,
    ServerError,
    Unavailable,
)

__all__ = [
    "AuthError",
    "DeadlineExceeded",
    "Forbidden",
    "InvalidRequest",
    "ModelNotFound",
    "NotSupported",
    "Overloaded",
    "RewardServeError",
    "ServerError",
    "Unavailable",
]
