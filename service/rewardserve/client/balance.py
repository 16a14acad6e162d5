"""Client-side load balancing and retry policy, shared by the sync and async clients.

Endpoints are used round-robin. One that fails to connect or answers "unavailable" is marked down
for a cool-off period, and one that answers "overloaded" for its Retry-After: calls go to the others
meanwhile. When every endpoint is marked down the call does not wait for the cool-off: it backs off
(exponentially, with jitter, at least Retry-After) and tries the one that comes back first, so a
single restarting server is retried promptly.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from rewardserve.client.errors import RewardServeError

__all__ = ["EndpointState", "RetryEvent", "RetryPolicy"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a failed call again.

    Retried: HTTP 429/502/503, gRPC RESOURCE_EXHAUSTED/UNAVAILABLE, connection failures. Never
    retried: invalid requests, missing models, auth failures, internal errors and timeouts (a
    timed-out call may still be running on the server; sending it again doubles its load).
    """

    max_attempts: int = 6
    """Tries per call (chunk), the first included."""
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    max_retry_after_s: float = 60.0
    """Cap on a server's Retry-After, so a misconfigured server cannot park the client for hours."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (1 means: never retry)")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s or self.multiplier < 1:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s and multiplier >= 1")

    def delay(self, attempt: int, error: RewardServeError, rng: random.Random) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based): exponential backoff with
        "equal jitter" (half fixed, half random: spreads clients apart without ever retrying at
        once), and never less than the server's Retry-After."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        wait = cap / 2 + rng.uniform(0, cap / 2)
        if error.retry_after_s is not None:
            wait = max(wait, min(error.retry_after_s, self.max_retry_after_s))
        return wait


@dataclass(frozen=True)
class RetryEvent:
    """Passed to the client's ``on_retry`` hook before it retries a failed try."""

    endpoint: str
    attempt: int
    error: RewardServeError
    delay_s: float
    """How long the client waits before the next try (0: it fails over to another endpoint now)."""


@dataclass(frozen=True)
class EndpointState:
    url: str
    healthy: bool
    """False while marked down (failed recently) or told to back off (429)."""
    down_for_s: float
    """Seconds left in its cool-off (0 when healthy)."""


class EndpointPool(Generic[T]):
    """Round-robin over endpoints that are not marked down. Thread-safe (the sync client scores
    chunks from worker threads); in the async client it is only touched from one loop."""

    def __init__(
        self,
        urls: Sequence[str],
        endpoints: Sequence[T],
        *,
        cooloff_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("give at least one server URL")
        self.urls = list(urls)
        self.endpoints = list(endpoints)
        self.cooloff_s = cooloff_s
        self._clock = clock
        self._down_until = [0.0] * len(self.endpoints)
        self._next = 0
        self._lock = threading.Lock()

    def pick(self) -> int:
        """The next healthy endpoint in round-robin order; if none is, the one back soonest."""
        with self._lock:
            now = self._clock()
            n = len(self.endpoints)
            for k in range(n):
                i = (self._next + k) % n
                if self._down_until[i] <= now:
                    self._next = i + 1
                    return i
            return min(range(n), key=self._down_until.__getitem__)

    def any_healthy(self) -> bool:
        with self._lock:
            now = self._clock()
            return any(t <= now for t in self._down_until)

    def failed(self, i: int, error: RewardServeError, max_retry_after_s: float) -> None:
        """Take endpoint ``i`` out of rotation: for the cool-off if it looks down, for its
        Retry-After if it is only busy."""
        if error.endpoint_down:
            hold = max(self.cooloff_s, error.retry_after_s or 0.0)
        elif error.retry_after_s is not None:
            hold = min(error.retry_after_s, max_retry_after_s)
        else:
            return
        with self._lock:
            self._down_until[i] = max(self._down_until[i], self._clock() + hold)

    def succeeded(self, i: int) -> None:
        with self._lock:
            self._down_until[i] = 0.0

    def states(self) -> list[EndpointState]:
        with self._lock:
            now = self._clock()
            return [
                EndpointState(url, t <= now, max(0.0, t - now))
                for url, t in zip(self.urls, self._down_until, strict=True)
            ]
