"""Token-budget batcher: many concurrent scoring calls in, one batch at a time out to the model.

Pure asyncio and torch-free: the model comes in as two callables, ``prepare`` (tokenize/pack a list of
items, CPU work) and ``run`` (the forward pass), so the tests drive it with a fake model.

Design (ARCHITECTURE.md, "The batcher"; TEI ``core/src/queue.rs``, Ray Serve ``_BatchQueue``):

* ``submit`` is one request of N items. Admission is decided before anything is enqueued (bounded
  queued requests and queued tokens, TEI's ``try_acquire``), so overload costs one comparison. The
  caller awaits ONE future for the whole request; each item writes its slot and the last one resolves it.
  ``admit`` takes the slot earlier, at arrival (before tokenizing), on an estimate, and also bounds
  the estimated queue wait in seconds (scoring/admission.py): overload gets fast 429s.
* A *former* task pops items FIFO while ``batch_cost`` stays within the token budget and the row cap
  (the first item that does not fit stays at the head), then ``prepare``s the batch on the "prepare"
  thread. A *runner* task ``run``s it on the "compute" thread. Between them is a channel of size one
  (a semaphore slot), so batch N+1 is formed and prepared while batch N computes, and never more than one
  batch is formed ahead (it would freeze items into a batch too early). There is no wait timer: an idle
  former sleeps on an ``asyncio.Event`` that ``submit`` sets, so a lone request starts at once.
  With ``workers`` > 1, that many runners (and compute threads) take batches from the one channel, so
  several batches run at once: on a CPU, two single-threaded forwards lose less to a core taken by the
  server's own threads than one forward split over two threads, which waits at every barrier for the
  preempted half (measured: 31.6k vs 28.1k tok/s with 20% of a core taken, 35k vs 35k without).
* Right before ``run``, items whose request is already resolved (cancelled by the client, failed by a
  sibling item, timed out) are dropped and the rest re-prepared: they must never cost device time.
* A deadline is a timer that fails the request's future directly, so the caller gets
  ``DeadlineExceeded`` on time even while a batch holding its items is still running.
* A failing batch is bisected until only the guilty items fail (innocent requests get their results).
  ``OutOfMemory`` from ``run`` also splits the batch, and lowers the effective token budget for good.
* Every future is resolved at most once (``done()`` is checked first: Ray #41057 killed its loop by
  skipping that) and, on every path, at least once: both loops catch everything but cancellation,
  ``close`` fails whatever is left, and counters are only ever changed by ``_unqueue``/``submit``.
* ``check_result`` (optional) vets each result: an exception it returns fails that item's request
  only (a NaN reward), never its batch mates.
* Watchdog: ``stalled_seconds`` (the oldest ``run`` still running), ``dead`` (why a loop died).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from rewardserve.errors import DeadlineExceeded, Draining, InputError, OutOfMemory, Overloaded
from rewardserve.naming import setting_name
from rewardserve.scoring.admission import Admission, AdmissionControl
from rewardserve.scoring.batch_items import BatchStats
from rewardserve.scoring.batch_items import Formed as _Formed
from rewardserve.scoring.batch_items import Item as _Item
from rewardserve.scoring.batch_items import Request as _Request

__all__ = ["Admission", "BatchStats", "Batcher"]

logger = logging.getLogger(__name__)

_SHUTTING_DOWN = "the server is shutting down; retry on another replica"

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


class Batcher(Generic[T, P, R]):
    """Batches items of concurrent requests under a token budget; see the module docstring."""

    def __init__(
        self,
        *,
        prepare: Callable[[list[T]], P],
        run: Callable[[P], Sequence[R]],
        batch_cost: Callable[[Sequence[int]], int],
        max_batch_tokens: int,
        max_batch_rows: int,
        max_queued_requests: int,
        max_queued_tokens: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "default",
        workers: int = 1,
        max_queue_wait_s: float | None = None,
        check_result: Callable[[int, R], Exception | None] | None = None,
    ) -> None:
        for what, value in (
            ("workers", workers),
            ("max_batch_tokens", max_batch_tokens),
            ("max_batch_rows", max_batch_rows),
            ("max_queued_requests", max_queued_requests),
            ("max_queued_tokens", max_queued_tokens),
        ):
            if value < 1:
                raise ValueError(f"{what} must be >= 1, got {value}")
        self._prepare_fn = prepare
        self._run_fn = run
        self._batch_cost = batch_cost
        self._budget_limit = max_batch_tokens  # what admission checks items against
        self._budget = max_batch_tokens  # effective budget, lowered after an out-of-memory
        self._max_batch_rows = max_batch_rows
        self._on_batch = on_batch
        self._name = name
        self._workers = workers
        self._check_result = check_result
        self._admission = AdmissionControl(
            max_queued_requests=max_queued_requests,
            max_queued_tokens=max_queued_tokens,
            max_queue_wait_s=max_queue_wait_s,
            workers=workers,
            batch_tokens=max_batch_tokens,
            fallback_retry_after=self._retry_after,
        )
        self._running: dict[int, float] = {}  # run id -> monotonic start, for the watchdog
        self._run_ids = itertools.count()
        self.dead: str | None = None
        """Why a batcher loop stopped unexpectedly (None while healthy)."""
        self._queue: deque[_Item[T, R]] = deque()
        self._requests: set[_Request[T, R]] = set()
        self._queued_items = 0
        self._queued_tokens = 0
        self._closed = False
        self._batch_seconds = 0.05  # running mean of batch time, for Retry-After estimates
        # asyncio primitives bind to the running loop on first use, so creating them here is safe.
        self._wakeup = asyncio.Event()  # set by submit: the former has something to look at
        self._idle = asyncio.Event()  # set while no request is in flight: what a drain waits for
        self._idle.set()
        self._slot = asyncio.Semaphore(1)  # the size-one channel: at most one batch formed ahead
        self._channel: asyncio.Queue[_Formed[T, R, P]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._prepare_pool: ThreadPoolExecutor | None = None
        self._compute_pool: ThreadPoolExecutor | None = None

    # --- metrics -----------------------------------------------------------------------------------
    @property
    def queued_requests(self) -> int:
        """Requests admitted and not yet answered (waiting or running)."""
        return len(self._requests)

    @property
    def queued_items(self) -> int:
        """Items waiting for a batch."""
        return self._queued_items

    @property
    def queued_tokens(self) -> int:
        """Tokens of the items waiting for a batch."""
        return self._queued_tokens

    @property
    def max_batch_tokens(self) -> int:
        """The effective token budget (lower than configured after an out-of-memory)."""
        return self._budget

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def admitted(self) -> int:
        """Calls holding an admission slot (from ``admit`` to their answer)."""
        return self._admission.admitted

    @property
    def tokens_per_second(self) -> float | None:
        """Measured throughput (None before the first batch)."""
        return self._admission.tokens_per_s

    def stalled_seconds(self, now: float | None = None) -> float:
        """How long the oldest ``run`` still running has been running (0 when none is)."""
        if not self._running:
            return 0.0
        return (time.monotonic() if now is None else now) - min(self._running.values())

    # --- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("Batcher.start() was already called")
        if self._closed:
            raise Draining("the batcher was closed; build a new one")
        # prepare (CPU) overlaps run (device); one prepare thread keeps batches in order, and each
        # runner has its own compute thread.
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix=f"rewardserve-{self._name}-prepare")
        self._compute_pool = ThreadPoolExecutor(
            self._workers, thread_name_prefix=f"rewardserve-{self._name}-compute"
        )
        self._tasks = [asyncio.create_task(self._form_loop(), name=f"batcher-{self._name}-former")]
        self._tasks += [
            asyncio.create_task(self._run_loop(), name=f"batcher-{self._name}-runner-{i}")
            for i in range(self._workers)
        ]
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting; with ``drain``, let queued and running work finish for up to ``timeout``
        seconds. Whatever is still unanswered then (everything, without ``drain``) gets ``Draining``."""
        self._closed = True
        try:
            if drain and self._tasks:
                await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            logger.warning(
                "batcher %s: drain timed out; failing %d requests", self._name, len(self._requests)
            )
        finally:  # even if close() itself is cancelled, nobody may be left waiting
            self._fail_all(lambda: Draining(_SHUTTING_DOWN))
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for pool in (self._prepare_pool, self._compute_pool):
                if pool is not None:
                    # A run stuck in its thread cannot be interrupted; do not let it block shutdown.
                    pool.shutdown(wait=False, cancel_futures=True)

    # --- admission -----------------------------------------------------------------------------------
    def check_admission(self) -> None:
        """Raise ``Draining`` or ``Overloaded`` now, before the caller spends time tokenizing."""
        if self._closed:
            raise Draining(_SHUTTING_DOWN)
        self._admission.check_count(max(self._admission.admitted, len(self._requests)))

    def _retry_after(self) -> float:
        # Before any throughput is measured: the time to work off what is queued, from the batch time.
        batches = max(1.0, self._queued_tokens / self._budget)
        return min(60.0, max(0.05, batches * self._batch_seconds))

    @contextlib.contextmanager
    def admit(self, tokens: int) -> Iterator[Admission]:
        """Hold one call's admission slot for the block (``tokens``: estimated before tokenizing), or
        raise Draining / InputError / Overloaded at once (scoring/admission.py). Pass it to submit."""
        if self._closed:
            raise Draining(_SHUTTING_DOWN)
        with self._admission.admit(tokens) as admission:
            yield admission

    async def submit(
        self,
        items: Sequence[T],
        tokens: Sequence[int],
        *,
        deadline: float | None = None,
        admission: Admission | None = None,
    ) -> list[R]:
        """Score ``items`` (``tokens[i]`` = length of ``items[i]``); results come back in item order.
        ``deadline`` is an absolute ``time.monotonic()`` value. With an ``admission`` (from ``admit``)
        the call was admitted already: its reservation becomes the real token count."""
        if self._closed:
            raise Draining(_SHUTTING_DOWN)
        if not self._tasks:
            raise RuntimeError("call `await Batcher.start()` before submit()")
        if len(items) != len(tokens):
            raise ValueError(f"got {len(items)} items but {len(tokens)} token counts")
        if not items:
            return []
        costs = [self._batch_cost([t]) for t in tokens]
        for i, cost in enumerate(costs):
            if cost > self._budget_limit:
                raise InputError(
                    f"input {i} has {tokens[i]} tokens (batch cost {cost}), more than max_batch_tokens="
                    f"{self._budget_limit}, so it can never be batched; raise "
                    f"{setting_name('max_batch_tokens')} or lower {setting_name('max_input_tokens')} "
                    "(or truncate the input)"
                )
        total = sum(tokens)
        self._admission.check_tokens(total)
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        if admission is not None:
            # Admitted at arrival on an estimate; from now on the slot reserves the real count.
            self._admission.settle(admission, total)
        else:
            self.check_admission()
        limit = self._admission.max_queued_tokens
        if admission is None and self._queued_tokens + total > limit:
            raise Overloaded(
                f"{self._queued_tokens} tokens queued (max_queued_tokens={limit})",
                retry_after_s=self._admission.retry_after(),
            )

        loop = asyncio.get_running_loop()
        request: _Request[T, R] = _Request(loop.create_future(), len(items), deadline)
        request.items = [
            _Item(request, i, value, n, cost, now)
            for i, (value, n, cost) in enumerate(zip(items, tokens, costs, strict=True))
        ]
        # No await between the admission checks and here: the bounds hold exactly (one event loop).
        self._requests.add(request)
        self._idle.clear()
        self._queue.extend(request.items)
        self._queued_items += len(items)
        self._queued_tokens += total
        self._wakeup.set()
        timer = None
        if deadline is not None:
            message = f"deadline passed after {deadline - now:.3f}s"
            timer = loop.call_later(deadline - now, lambda: request.fail(DeadlineExceeded(message)))
        try:
            # A cancel of the caller cancels this future too, which is how its items get dropped.
            return await request.future
        finally:
            if timer is not None:
                timer.cancel()
            for item in request.items:
                self._unqueue(item)
            self._requests.discard(request)
            if not self._requests:
                self._idle.set()

    # --- batching ------------------------------------------------------------------------------------
    def _unqueue(self, item: _Item[T, R]) -> None:
        # Idempotent, and the only place counters go down: they stay exact on every path.
        if item.queued:
            item.queued = False
            self._queued_items -= 1
            self._queued_tokens -= item.tokens

    def _alive(self, item: _Item[T, R], now: float) -> bool:
        request = item.request
        if request.future.done():
            return False
        if request.deadline is not None and now >= request.deadline:
            request.fail(DeadlineExceeded("deadline passed while queued"))
            return False
        return True

    def _pop_batch(self, batch: list[_Item[T, R]]) -> None:
        """Move items from the head of the queue into ``batch`` while it fits the budget and row cap."""
        now = time.monotonic()
        tokens: list[int] = []
        while self._queue and len(batch) < self._max_batch_rows:
            item = self._queue[0]
            if not item.queued or not self._alive(item, now):
                self._unqueue(self._queue.popleft())
                continue
            # An empty batch always takes the head item, so a lowered budget never blocks the queue.
            if batch and self._batch_cost([*tokens, item.tokens]) > self._budget:
                break
            self._unqueue(self._queue.popleft())
            batch.append(item)
            tokens.append(item.tokens)

    async def _prepare(self, items: list[_Item[T, R]]) -> tuple[P, float]:
        started = time.monotonic()
        values = [item.value for item in items]
        prepared = await asyncio.get_running_loop().run_in_executor(
            self._prepare_pool, self._prepare_fn, values
        )
        return prepared, time.monotonic() - started

    async def _form_loop(self) -> None:
        while True:
            await self._slot.acquire()
            batch: list[_Item[T, R]] = []
            try:
                while True:
                    self._pop_batch(batch)
                    if batch:
                        break
                    self._wakeup.clear()  # nothing queued: sleep until submit() sets it (no timer)
                    await self._wakeup.wait()
                try:
                    formed = _Formed(batch, await self._prepare(batch), None)
                except Exception as exc:
                    formed = _Formed(batch, None, exc)
            except Exception as exc:  # a bug (say in batch_cost) must not kill the loop or strand items
                logger.exception("batcher %s: forming a batch failed", self._name)
                self._fail_items(batch, exc)
                self._slot.release()
                continue
            self._channel.put_nowait(formed)

    async def _run_loop(self) -> None:
        while True:
            formed = await self._channel.get()
            self._slot.release()  # the former may now build the next batch while this one runs
            try:
                await self._execute(formed.items, formed.prepared, formed.error)
            except Exception as exc:
                logger.exception("batcher %s: executing a batch failed", self._name)
                self._fail_items(formed.items, exc)

    async def _execute(
        self, items: list[_Item[T, R]], prepared: tuple[P, float] | None, error: Exception | None
    ) -> None:
        now = time.monotonic()
        live = [item for item in items if self._alive(item, now)]
        if not live:
            return
        try:
            if error is not None:
                raise error
            if prepared is None or len(live) != len(items):
                prepared = await self._prepare(live)  # dropped items must not reach run
            value, prepare_seconds = prepared
            started = time.monotonic()
            run_id = next(self._run_ids)
            self._running[run_id] = started
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._compute_pool, self._run_fn, value
                )
            finally:
                del self._running[run_id]
            run_seconds = time.monotonic() - started
            if len(results) != len(live):
                raise RuntimeError(
                    f"the model returned {len(results)} results for a batch of {len(live)} inputs; "
                    "run() must return exactly one result per input, in order"
                )
        except OutOfMemory:
            if len(live) == 1:
                # Alone and still too big: the input's fault, not the server's (a 4xx, not a 500).
                live[0].request.fail(
                    InputError(
                        f"out of device memory scoring this input alone ({live[0].tokens} tokens); send "
                        f"it shorter (or with truncate) or lower {setting_name('max_input_tokens')}",
                        index=live[0].index,
                    )
                )
                return
            self._lower_budget(live)
            await self._split(live)
            return
        except Exception as exc:
            if len(live) == 1:
                live[0].request.fail(exc)
                return
            # Bisect so only the guilty items fail; costs up to 2N-1 runs when the whole batch is bad.
            logger.warning("batcher %s: batch of %d failed (%r); bisecting", self._name, len(live), exc)
            await self._split(live)
            return
        check = self._check_result
        for item, result in zip(live, results, strict=True):
            error = None if check is None else check(item.index, result)
            if error is not None:
                item.request.fail(error)  # this request only; its batch mates keep their results
            else:
                item.request.put(item.index, result)
        self._record(live, started, prepare_seconds, run_seconds)

    async def _split(self, live: list[_Item[T, R]]) -> None:
        middle = len(live) // 2
        await self._execute(live[:middle], None, None)
        await self._execute(live[middle:], None, None)

    def _lower_budget(self, live: list[_Item[T, R]]) -> None:
        failed_cost = self._batch_cost([item.tokens for item in live])
        # Never below the largest item: it must still be able to run alone.
        budget = max(1, max(item.cost for item in live), failed_cost // 2)
        if budget < self._budget:
            logger.warning(
                "batcher %s: out of memory; max_batch_tokens %d -> %d", self._name, self._budget, budget
            )
            self._budget = budget

    def _record(
        self, live: list[_Item[T, R]], started: float, prepare_seconds: float, run_seconds: float
    ) -> None:
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (prepare_seconds + run_seconds)
        self._admission.record(sum(item.tokens for item in live), run_seconds)
        if self._on_batch is None:
            return
        try:
            tokens = [item.tokens for item in live]
            stats = BatchStats(
                rows=len(live),
                tokens=sum(tokens),
                cost=self._batch_cost(tokens),
                queue_seconds=[started - item.enqueued_at for item in live],
                prepare_seconds=prepare_seconds,
                run_seconds=run_seconds,
            )
            self._on_batch(stats)
        except Exception:  # metrics must never take the batch loop down
            logger.exception("batcher %s: on_batch callback failed", self._name)

    # --- failure paths -------------------------------------------------------------------------------
    def _fail_items(self, items: list[_Item[T, R]], exc: BaseException) -> None:
        for item in items:
            item.request.fail(exc)

    def _fail_all(self, make_exc: Callable[[], BaseException]) -> None:
        while self._queue:
            self._unqueue(self._queue.popleft())
        for request in list(self._requests):
            request.fail(make_exc())  # one instance each: tracebacks are per raise

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # The loops catch every Exception; this is the last line for anything else, so no caller hangs.
        if task.cancelled():
            return
        logger.error(
            "batcher %s: %s stopped unexpectedly", self._name, task.get_name(), exc_info=task.exception()
        )
        self._closed = True
        self.dead = f"{task.get_name()} stopped: {task.exception()!r}"
        self._fail_all(lambda: Draining("the batcher stopped unexpectedly"))
