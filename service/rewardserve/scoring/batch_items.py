"""What the batcher holds per request, per item and per formed batch, and what it reports per batch.

Plain dataclasses (no asyncio logic beyond resolving a future once); the batcher (batcher.py) owns
every state change. ``Request.fail`` and ``Request.put`` check ``done()`` first: a deadline, a client
cancel or a sibling item may have resolved the future already.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatchStats", "Formed", "Item", "Request"]

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchStats:
    """What one successfully executed batch looked like; given to ``on_batch`` for metrics."""

    rows: int
    tokens: int
    cost: int
    queue_seconds: list[float]  # per item: from submit to the start of the run that computed it
    prepare_seconds: float
    run_seconds: float


@dataclass(eq=False)
class Request(Generic[T, R]):
    future: asyncio.Future[list[R]]
    size: int
    deadline: float | None
    items: list[Item[T, R]] = field(default_factory=list)
    results: dict[int, R] = field(default_factory=dict)

    def fail(self, exc: BaseException) -> None:
        # A deadline, a client cancel or a sibling item may have resolved it already.
        if not self.future.done():
            self.future.set_exception(exc)

    def put(self, index: int, value: R) -> None:
        if self.future.done():
            return
        self.results[index] = value
        if len(self.results) == self.size:
            self.future.set_result([self.results[i] for i in range(self.size)])


@dataclass(eq=False)
class Item(Generic[T, R]):
    request: Request[T, R]
    index: int
    value: T
    tokens: int
    cost: int  # batch_cost([tokens]): an item alone always fits, whatever the (lowered) budget
    enqueued_at: float
    queued: bool = True  # still counted in queued_items / queued_tokens


@dataclass
class Formed(Generic[T, R, P]):
    items: list[Item[T, R]]
    prepared: tuple[P, float] | None  # (prepared batch, prepare seconds)
    error: Exception | None  # prepare raised: the runner bisects the batch
