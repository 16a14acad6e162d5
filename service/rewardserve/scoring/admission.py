"""Admission control for the batcher: who may queue, decided before any work is done.

A call takes a slot when it arrives (``admit``), before it is tokenized, with an estimate of its
tokens; the slot is held until the call is answered, and its reservation becomes the real token count
once known (``settle``). Bounds, each refused at once with ``Overloaded`` (429 + Retry-After):

* calls admitted (``max_queued_requests``) and tokens reserved (``max_queued_tokens``): memory
  backstops; one call alone over the token bound is an ``InputError`` instead (no retry admits it);
* the estimated queue wait, reserved tokens / measured tokens per second (``max_queue_wait_s``): the
  bound that bites under overload, so admitted calls wait seconds, and the rest get fast 429s
  instead of timing out in a queue (docs/deploy.md, "Admission"). The rate is token-weighted over
  recent batches, so full batches (what an overload runs) dominate it; and a backlog that fits in
  one batch (``batch_tokens``) is never refused on time, since it runs as one batch: a burst after
  a quiet spell, when only small, overhead-bound batches were measured, is not refused on their rate.

One event loop: no locks. Pure Python, no torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rewardserve.errors import InputError, Overloaded
from rewardserve.naming import setting_name

__all__ = ["Admission", "AdmissionControl"]


@dataclass(eq=False)
class Admission:
    """A call's admission slot: held from arrival to answer, with the tokens it reserves (an estimate
    until the call is tokenized, then the real count)."""

    tokens: int


class AdmissionControl:
    """The bounds above, over the calls holding a slot; ``record`` feeds it the measured throughput."""

    def __init__(
        self,
        *,
        max_queued_requests: int,
        max_queued_tokens: int,
        max_queue_wait_s: float | None,
        workers: int,
        batch_tokens: int,
        fallback_retry_after: Callable[[], float],
    ) -> None:
        self.max_queued_requests = max_queued_requests
        self.max_queued_tokens = max_queued_tokens
        self._max_wait = max_queue_wait_s
        self._workers = workers
        self._batch_tokens = batch_tokens
        self._decayed_tokens = 0.0  # token-weighted throughput: decayed sums over recent batches
        self._decayed_seconds = 0.0
        self._fallback = fallback_retry_after  # before any throughput is measured
        self.admitted = 0  # calls holding a slot: tokenizing, queued or running
        self.admitted_tokens = 0  # tokens they reserve
        self.tokens_per_s: float | None = None  # moving average over batches; None until measured

    def retry_after(self) -> float:
        """Roughly the time to work off what is admitted; bounded both ways."""
        if self.tokens_per_s:
            return min(60.0, max(0.05, self.admitted_tokens / self.tokens_per_s))
        return self._fallback()

    def check_tokens(self, total: int) -> None:
        if total > self.max_queued_tokens:
            # Overloaded would be a lie: no amount of retrying admits this request.
            raise InputError(
                f"request has about {total} tokens, more than max_queued_tokens={self.max_queued_tokens}; "
                f"split it into smaller requests or raise {setting_name('max_queued_tokens')}"
            )

    def check_count(self, in_flight: int) -> None:
        if in_flight >= self.max_queued_requests:
            raise Overloaded(
                f"{in_flight} requests in flight (max_queued_requests={self.max_queued_requests})",
                retry_after_s=self.retry_after(),
            )

    @contextlib.contextmanager
    def admit(self, tokens: int) -> Iterator[Admission]:
        """Hold a slot for the block, or raise InputError / Overloaded at once (module docstring)."""
        self.check_tokens(tokens)
        self.check_count(self.admitted)
        if self.admitted_tokens + tokens > self.max_queued_tokens:
            raise Overloaded(
                f"{self.admitted_tokens} tokens queued (max_queued_tokens={self.max_queued_tokens})",
                retry_after_s=self.retry_after(),
            )
        rate, bound = self.tokens_per_s, self._max_wait
        ahead = self.admitted_tokens + tokens
        # Only with more than a batch of work: that much runs at once, whatever the rate says.
        if rate and bound is not None and self.admitted_tokens > 0 and ahead > self._batch_tokens:
            wait = ahead / rate
            if wait > bound:
                raise Overloaded(
                    f"estimated queue wait {wait:.1f}s > max_queue_wait_s={bound}",
                    retry_after_s=self.retry_after(),
                )
        admission = Admission(tokens)
        self.admitted += 1
        self.admitted_tokens += tokens
        try:
            yield admission
        finally:
            self.admitted -= 1
            self.admitted_tokens -= admission.tokens

    def settle(self, admission: Admission, tokens: int) -> None:
        """The call is tokenized: its reservation becomes the real count."""
        self.admitted_tokens += tokens - admission.tokens
        admission.tokens = tokens

    def record(self, tokens: int, run_seconds: float) -> None:
        """A batch of ``tokens`` ran in ``run_seconds`` on one of the ``workers``."""
        if run_seconds <= 0:
            return
        # Sum of tokens over sum of seconds: a batch weighs by its size, and the last ~10 count most.
        self._decayed_tokens = 0.9 * self._decayed_tokens + tokens
        self._decayed_seconds = 0.9 * self._decayed_seconds + run_seconds
        # All workers together: each runs its own batches at this rate.
        self.tokens_per_s = self._decayed_tokens / self._decayed_seconds * self._workers
