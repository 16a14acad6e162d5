"""Running a call's chunks side by side: the one place the async and blocking clients differ in how
they wait, so that everything else in client/sync.py can be generated from client/aio.py.

Both runners take ``fn`` and items, run at most ``limit`` calls at once, return the results in the
items' order, and on the first failure stop the calls not yet finished (nobody would read them)
before the error propagates.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class AsyncFanOut:
    """asyncio: one task per item, a semaphore for the limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    async def map(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
        slots = asyncio.Semaphore(self._limit)

        async def one(item: T) -> R:
            async with slots:
                return await fn(item)

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def aclose(self) -> None:
        """Nothing to release: the tasks belong to the calls that started them."""


class FanOut:
    """Threads: a pool of ``limit`` workers, started on first use and kept for the client's life."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._limit, thread_name_prefix="rewardserve-client"
                )
        # executor.map yields in submission order and, when one call fails, cancels those not yet
        # started.
        return list(self._executor.map(fn, items))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
