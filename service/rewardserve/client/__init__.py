"""What trainers import to call a rewardserve server: ``RewardClient`` (blocking) and
``AsyncRewardClient`` (asyncio), over HTTP or gRPC, with retries, fail-over and chunking.

This package imports only httpx, grpcio, protobuf and the generated stubs (never torch,
transformers, pydantic or the server's modules), so a trainer's environment needs nothing else
(``pip install --no-deps rewardserve`` plus those three). Adapters: ``rewardserve.client.trl`` (TRL
reward functions) and ``rewardserve.client.verl`` (verl custom reward functions). See
docs/integrations.md.
"""

from rewardserve.client.aio import AsyncRewardClient
from rewardserve.client.balance import EndpointState, RetryEvent, RetryPolicy
from rewardserve.client.errors import (
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
from rewardserve.client.sync import RewardClient
from rewardserve.client.types import (
    CompareResult,
    GenerateResponse,
    Input,
    Message,
    ModelInfo,
    ModelRef,
    Pair,
    RolloutResponse,
    ScoreDetail,
    ScoreResult,
)

__all__ = [
    "AsyncRewardClient",
    "AuthError",
    "CompareResult",
    "DeadlineExceeded",
    "EndpointState",
    "Forbidden",
    "GenerateResponse",
    "Input",
    "InvalidRequest",
    "Message",
    "ModelInfo",
    "ModelNotFound",
    "ModelRef",
    "NotSupported",
    "Overloaded",
    "Pair",
    "RetryEvent",
    "RetryPolicy",
    "RewardClient",
    "RewardServeError",
    "RolloutResponse",
    "ScoreDetail",
    "ScoreResult",
    "ServerError",
    "Unavailable",
]
