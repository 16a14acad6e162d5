"""Unit tests of the token-budget batcher, driven by a fake model (no torch).

Timing is gated, never slept on: the fake ``run`` blocks on a ``threading.Event`` (it runs in the
compute thread) and the tests wait for the state they assert on with a bounded ``eventually``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from rewardserve.errors import DeadlineExceeded, Draining, InputError, OutOfMemory, Overloaded
from rewardserve.scoring.batcher import Batcher, BatchStats

# A hang is a failure here, not a wait for the global 300 s timeout.
pytestmark = pytest.mark.timeout(20)

IntBatcher = Batcher[int, list[int], int]
MakeBatcher = Callable[..., Awaitable[tuple[IntBatcher, "FakeModel"]]]


def packed(tokens: Sequence[int]) -> int:
    return sum(tokens)


def padded(tokens: Sequence[int]) -> int:
    return max(tokens, default=0) * len(tokens)


class FakeModel:
    """Doubles its inputs and records every batch it was given; ``run`` can be held on ``gate``."""

    def __init__(self) -> None:
        self.prepared: list[list[int]] = []
        self.batches: list[list[int]] = []
        self.finished = 0  # runs that returned or raised: teardown waits for the thread to go quiet
        self.gate = threading.Event()
        self.gate.set()
        self.poison: set[int] = set()
        self.prepare_poison: set[int] = set()
        self.oom_if: Callable[[list[int]], bool] = lambda batch: False
        self.wrong_length = False
        self.delay = 0.0  # simulated compute time, for the stress test
        self._lock = threading.Lock()

    def prepare(self, items: list[int]) -> list[int]:
        with self._lock:
            self.prepared.append(list(items))
        if self.prepare_poison & set(items):
            raise ValueError(f"cannot prepare {items}")
        return list(items)

    def run(self, batch: list[int]) -> list[int]:
        with self._lock:
            self.batches.append(list(batch))
        try:
            assert self.gate.wait(timeout=10), "the test never opened the gate"
            if self.delay:
                time.sleep(self.delay)
            if self.poison & set(batch):
                raise ValueError(f"poison in {batch}")
            if self.oom_if(batch):
                raise OutOfMemory(f"{batch} is too big")
            return [] if self.wrong_length else [x * 2 for x in batch]
        finally:
            with self._lock:
                self.finished += 1

    def quiet(self) -> bool:
        with self._lock:
            return self.finished == len(self.batches)

    def ran(self) -> set[int]:
        return {x for batch in self.batches for x in batch}


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait (bounded) for a state change the test then asserts on."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def assert_idle(batcher: IntBatcher) -> None:
    assert (batcher.queued_requests, batcher.queued_items, batcher.queued_tokens) == (0, 0, 0)


@pytest.fixture
async def make_batcher() -> AsyncIterator[MakeBatcher]:
    made: list[tuple[IntBatcher, FakeModel]] = []

    async def make(
        cost: Callable[[Sequence[int]], int] = packed, **settings: Any
    ) -> tuple[IntBatcher, FakeModel]:
        model = FakeModel()
        settings = {
            "max_batch_tokens": 100,
            "max_batch_rows": 100,
            "max_queued_requests": 1000,
            "max_queued_tokens": 100_000,
            **settings,
        }
        batcher: IntBatcher = Batcher(prepare=model.prepare, run=model.run, batch_cost=cost, **settings)
        await batcher.start()
        made.append((batcher, model))
        return batcher, model

    yield make
    for batcher, model in made:
        model.gate.set()
        await batcher.close(drain=False)
        await eventually(model.quiet, "the compute thread to finish")


async def occupy(batcher: IntBatcher, model: FakeModel) -> list[asyncio.Task[list[int]]]:
    """Hold batch [1000] in run and batch [1001] prepared behind it: later submits stay queued."""
    model.gate.clear()
    first = asyncio.create_task(batcher.submit([1000], [1]))
    await eventually(lambda: model.batches == [[1000]], "the first batch to reach run")
    second = asyncio.create_task(batcher.submit([1001], [1]))
    await eventually(lambda: model.prepared[-1:] == [[1001]], "the second batch to be prepared")
    return [first, second]


# --- shaping ---------------------------------------------------------------------------------------


async def test_token_budget_and_row_cap_shape_batches(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher(max_batch_tokens=10, max_batch_rows=3)
    tokens = [4, 4, 4, 1, 1, 1, 1, 9, 2]
    assert await batcher.submit(list(range(9)), tokens) == [x * 2 for x in range(9)]
    # [4,4]+4 > 10; [4,1,1] hits the row cap; [1,1]+9 > 10; [9]+2 > 10; the item that does not fit
    # always heads the next batch.
    assert model.batches == [[0, 1], [2, 3, 4], [5, 6], [7], [8]]
    assert_idle(batcher)


async def test_padded_cost_counts_longest_times_rows(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher(cost=padded, max_batch_tokens=10)
    assert await batcher.submit([0, 1, 2, 3], [1, 1, 4, 1]) == [0, 2, 4, 6]
    # 3 rows padded to 4 cost 12 (packed they would be 6, and all four would fit in one batch).
    assert model.batches == [[0, 1], [2, 3]]


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    # Thread-side wait, so the event loop schedules no timer of its own while we watch it.
    give_up = time.monotonic() + timeout
    while not condition() and time.monotonic() < give_up:
        time.sleep(0.001)
    return condition()


async def test_idle_batcher_dispatches_without_a_timer(
    make_batcher: MakeBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher, model = await make_batcher()
    model.gate.clear()
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    real_call_at = loop.call_at

    def spy_call_at(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return real_call_at(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", spy_call_at)
    try:
        task = asyncio.create_task(batcher.submit([7], [3]))
        entered = await asyncio.to_thread(lambda: _wait_for(lambda: model.batches == [[7]], 5.0))
    finally:
        monkeypatch.undo()
    assert entered, "the item never reached run"
    assert timers == []  # no wait timer between an idle device and the first batch
    model.gate.set()
    assert await task == [14]


async def test_next_batch_is_prepared_while_current_runs(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    model.gate.clear()
    first = asyncio.create_task(batcher.submit([1], [1]))
    await eventually(lambda: model.batches == [[1]], "batch 1 to reach run")
    second = asyncio.create_task(batcher.submit([2], [1]))
    await eventually(lambda: model.prepared == [[1], [2]], "batch 2 to be prepared")
    assert model.batches == [[1]]  # batch 1 is still blocked in run
    model.gate.set()
    assert await first == [2]
    assert await second == [4]
    assert model.batches == [[1], [2]]
    assert model.prepared == [[1], [2]]  # batch 2 was not prepared again
    assert_idle(batcher)


# --- admission -------------------------------------------------------------------------------------


async def test_admission_refuses_over_request_bound(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher(max_queued_requests=2)
    busy = await occupy(batcher, model)
    assert batcher.queued_requests == 2  # running and prepared requests count too
    with pytest.raises(Overloaded) as refused:
        batcher.check_admission()
    assert refused.value.retry_after_s > 0
    with pytest.raises(Overloaded):
        await batcher.submit([5], [1])
    assert batcher.queued_items == 0
    model.gate.set()
    assert await asyncio.gather(*busy) == [[2000], [2002]]
    assert await batcher.submit([5], [1]) == [10]
    assert 5 in model.ran() and len(model.batches) == 3
    assert_idle(batcher)


async def test_admission_refuses_over_token_bound(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher(max_queued_tokens=10, max_batch_rows=1)
    busy = await occupy(batcher, model)
    waiting = asyncio.create_task(batcher.submit([3], [6]))
    await eventually(lambda: batcher.queued_tokens == 6, "the request to be queued")
    with pytest.raises(Overloaded) as refused:
        await batcher.submit([4], [5])  # 6 + 5 > 10
    assert refused.value.retry_after_s > 0
    assert (batcher.queued_items, batcher.queued_tokens) == (1, 6)  # nothing of it was enqueued
    fits = asyncio.create_task(batcher.submit([5], [4]))  # 6 + 4 == 10
    with pytest.raises(ValueError, match="max-queued-tokens"):
        await batcher.submit([6, 7], [6, 5])  # could never be admitted: not a 429
    model.gate.set()
    assert await asyncio.gather(*busy, waiting, fits) == [[2000], [2002], [6], [10]]
    assert 4 not in model.ran()
    assert_idle(batcher)


async def test_oversize_item_is_a_value_error_saying_how_to_fix(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher(max_batch_tokens=10)
    with pytest.raises(ValueError, match=r"input 1 has 11 tokens.*raise --max-batch-tokens"):
        await batcher.submit([1, 2], [3, 11])
    assert model.prepared == [] and model.batches == []
    assert_idle(batcher)


async def test_argument_checks(make_batcher: MakeBatcher) -> None:
    def unstarted(rows: int) -> IntBatcher:
        return Batcher(
            prepare=list,
            run=list,
            batch_cost=packed,
            max_batch_tokens=8,
            max_batch_rows=rows,
            max_queued_requests=1,
            max_queued_tokens=8,
        )

    with pytest.raises(ValueError, match="max_batch_rows must be >= 1"):
        unstarted(0)
    with pytest.raises(RuntimeError, match="start"):
        await unstarted(1).submit([1], [1])
    batcher, model = await make_batcher()
    assert await batcher.submit([], []) == []
    with pytest.raises(ValueError, match="2 items but 1 token counts"):
        await batcher.submit([1, 2], [1])
    assert model.batches == []
    assert_idle(batcher)


# --- deadlines and cancellation --------------------------------------------------------------------


async def test_expired_items_never_reach_run(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    with pytest.raises(DeadlineExceeded):
        await batcher.submit([6], [1], deadline=time.monotonic() - 1)  # already late: not enqueued
    assert_idle(batcher)

    model.gate.clear()
    running = asyncio.create_task(batcher.submit([1], [1]))
    await eventually(lambda: model.batches == [[1]], "batch 1 to reach run")
    prefetched = asyncio.create_task(batcher.submit([2], [1], deadline=time.monotonic() + 0.05))
    await eventually(lambda: [2] in model.prepared, "batch 2 to be prepared")
    queued = asyncio.create_task(batcher.submit([3], [1], deadline=time.monotonic() + 0.05))
    # Both fail on time although batch 1 is still stuck in run.
    for late in (prefetched, queued):
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(late, 2)
    assert not model.gate.is_set() and model.batches == [[1]]
    assert batcher.queued_items == 0 and batcher.queued_requests == 1
    model.gate.set()
    assert await running == [2]
    assert await batcher.submit([4], [1]) == [8]
    assert model.batches == [[1], [4]]
    assert_idle(batcher)


async def test_expired_request_loses_only_its_uncomputed_items(make_batcher: MakeBatcher) -> None:
    # The item already in run finishes (its result is discarded); the two behind it never run.
    batcher, model = await make_batcher(max_batch_rows=1)
    model.gate.clear()
    task = asyncio.create_task(batcher.submit([1, 2, 3], [1, 1, 1], deadline=time.monotonic() + 0.1))
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(task, 2)
    model.gate.set()
    assert await batcher.submit([9], [1]) == [18]
    assert model.batches == [[1], [9]]
    assert_idle(batcher)


async def test_cancelled_items_never_reach_run(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    model.gate.clear()
    running = asyncio.create_task(batcher.submit([1], [1]))
    await eventually(lambda: model.batches == [[1]], "batch 1 to reach run")
    prefetched = asyncio.create_task(batcher.submit([2], [1]))
    await eventually(lambda: [2] in model.prepared, "batch 2 to be prepared")
    queued = asyncio.create_task(batcher.submit([3, 4], [1, 1]))
    await eventually(lambda: batcher.queued_items == 2, "batch 3 to be queued")
    for client_gone in (prefetched, queued):
        client_gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await client_gone
    assert batcher.queued_items == 0 and batcher.queued_tokens == 0
    model.gate.set()
    assert await running == [2]
    assert await batcher.submit([5], [1]) == [10]
    assert model.batches == [[1], [5]]
    assert_idle(batcher)


async def test_partly_cancelled_batch_is_prepared_again_without_them(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    model.gate.clear()
    running = asyncio.create_task(batcher.submit([1], [1]))
    await eventually(lambda: model.batches == [[1]], "batch 1 to reach run")
    gone = asyncio.create_task(batcher.submit([2], [1]))
    kept = asyncio.create_task(batcher.submit([3], [1]))
    await eventually(lambda: [2, 3] in model.prepared, "batch 2 to be prepared")
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    model.gate.set()
    assert await running == [2]
    assert await kept == [6]
    assert model.prepared == [[1], [2, 3], [3]]
    assert model.batches == [[1], [3]]
    assert_idle(batcher)


# --- failure isolation -----------------------------------------------------------------------------


async def test_bisect_isolates_a_poison_item(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    busy = await occupy(batcher, model)
    tasks = [asyncio.create_task(batcher.submit([i], [1])) for i in range(8)]
    await eventually(lambda: batcher.queued_items == 8, "the eight requests to be queued")
    model.poison = {5}
    model.gate.set()
    results = await asyncio.gather(*busy, *tasks, return_exceptions=True)
    assert results[:2] == [[2000], [2002]]
    for i, result in enumerate(results[2:]):
        if i == 5:
            assert isinstance(result, ValueError) and "poison" in str(result)
        else:
            assert result == [i * 2]
    assert model.batches[2:] == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [4, 5],
        [4],
        [5],
        [6, 7],
    ]
    assert_idle(batcher)


async def test_failed_item_drops_the_rest_of_its_request(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    busy = await occupy(batcher, model)
    doomed = asyncio.create_task(batcher.submit([1, 2, 66, 4], [1, 1, 1, 1]))
    innocent = asyncio.create_task(batcher.submit([7], [1]))
    await eventually(lambda: batcher.queued_items == 5, "both requests to be queued")
    model.poison = {66}
    model.gate.set()
    with pytest.raises(ValueError, match="poison"):
        await doomed
    assert await innocent == [14]
    await asyncio.gather(*busy)
    # [66] fails its request, so 4 (same request, not computed yet) is dropped before the last run.
    assert model.batches[2:] == [[1, 2, 66, 4, 7], [1, 2], [66, 4, 7], [66], [7]]
    assert_idle(batcher)


async def test_prepare_failure_is_bisected_too(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    busy = await occupy(batcher, model)
    tasks = [asyncio.create_task(batcher.submit([i], [1])) for i in range(4)]
    await eventually(lambda: batcher.queued_items == 4, "the four requests to be queued")
    model.prepare_poison = {3}
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[:3] == [[0], [2], [4]]
    assert isinstance(results[3], ValueError) and "cannot prepare" in str(results[3])
    assert 3 not in model.ran()
    await asyncio.gather(*busy)
    assert_idle(batcher)


async def test_out_of_memory_splits_and_lowers_the_budget(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher(max_batch_tokens=16)
    model.oom_if = lambda batch: len(batch) > 1
    assert await batcher.submit([0, 1, 2, 3], [4, 4, 4, 4]) == [0, 2, 4, 6]
    assert model.batches == [[0, 1, 2, 3], [0, 1], [0], [1], [2, 3], [2], [3]]
    # 16 failed -> max(4, 16 // 2) = 8; 8 failed -> max(4, 8 // 2) = 4.
    assert batcher.max_batch_tokens == 4
    model.oom_if = lambda batch: False
    assert await batcher.submit([10, 11, 12], [2, 2, 2]) == [20, 22, 24]
    assert model.batches[7:] == [[10, 11], [12]]  # formed under the lowered budget
    # An item that does not fit alone is the input's fault: a client error (4xx), naming the input.
    model.oom_if = lambda batch: 13 in batch
    with pytest.raises(InputError, match=r"inputs\[0\]: out of device memory scoring this input alone"):
        await batcher.submit([13], [4])
    assert batcher.max_batch_tokens == 4  # never below what one item needs
    assert_idle(batcher)


async def test_wrong_number_of_results_is_an_error_not_a_hang(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    model.wrong_length = True
    with pytest.raises(RuntimeError, match="returned 0 results for a batch of 1 inputs"):
        await asyncio.wait_for(batcher.submit([1, 2], [1, 1]), 5)
    model.wrong_length = False
    assert await batcher.submit([3], [1]) == [6]
    assert_idle(batcher)


async def test_on_batch_gets_stats_and_its_bugs_do_not_kill_the_loop(
    make_batcher: MakeBatcher, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BatchStats] = []

    def on_batch(stats: BatchStats) -> None:
        seen.append(stats)
        raise RuntimeError("metrics bug")

    batcher, _ = await make_batcher(on_batch=on_batch)
    with caplog.at_level(logging.ERROR, logger="rewardserve.scoring.batcher"):
        assert await batcher.submit([1, 2], [3, 4]) == [2, 4]
        assert await batcher.submit([5], [2]) == [10]
    assert [(s.rows, s.tokens, s.cost, len(s.queue_seconds)) for s in seen] == [(2, 7, 7, 2), (1, 2, 2, 1)]
    assert all(q >= 0 for s in seen for q in s.queue_seconds)
    assert all(s.prepare_seconds >= 0 and s.run_seconds >= 0 for s in seen)
    assert sum("on_batch callback failed" in r.getMessage() for r in caplog.records) == 2


async def test_a_bug_in_batch_cost_fails_that_batch_not_the_loop(
    make_batcher: MakeBatcher, caplog: pytest.LogCaptureFixture
) -> None:
    def cost(tokens: Sequence[int]) -> int:
        if len(tokens) > 1 and 13 in tokens:
            raise ZeroDivisionError("bug in batch_cost")
        return sum(tokens)

    batcher, model = await make_batcher(cost=cost)
    busy = await occupy(batcher, model)
    first = asyncio.create_task(batcher.submit([1], [1]))
    second = asyncio.create_task(batcher.submit([2], [13]))
    await eventually(lambda: batcher.queued_items == 2, "both requests to be queued")
    with caplog.at_level(logging.ERROR, logger="rewardserve.scoring.batcher"):
        model.gate.set()
        with pytest.raises(ZeroDivisionError):
            await first  # its batch was being formed when batch_cost raised
        assert await second == [4]  # alone, 13 costs nothing to check
    assert any("forming a batch failed" in r.getMessage() for r in caplog.records)
    assert await asyncio.gather(*busy) == [[2000], [2002]]
    assert await batcher.submit([3], [1]) == [6]
    assert_idle(batcher)


async def test_every_future_is_resolved_exactly_once(
    make_batcher: MakeBatcher, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    batcher, model = await make_batcher()
    model.gate.clear()
    with caplog.at_level(logging.ERROR, logger="rewardserve.scoring.batcher"):
        # Both requests land in one batch; one expires and one is cancelled while it runs, then run
        # returns results for all three items: none may be set on an already-resolved future.
        expiring = asyncio.create_task(batcher.submit([1, 2], [1, 1], deadline=time.monotonic() + 0.05))
        cancelled = asyncio.create_task(batcher.submit([3], [1]))
        await eventually(lambda: model.batches == [[1, 2, 3]], "the batch to reach run")
        with pytest.raises(DeadlineExceeded):
            await expiring
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        model.gate.set()
        await eventually(lambda: model.finished == 1, "the run to return")
        assert await batcher.submit([4], [1]) == [8]  # and the loop is alive
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert loop_errors == []
    assert_idle(batcher)


# --- shutdown --------------------------------------------------------------------------------------


async def test_close_with_drain_finishes_queued_and_running_work(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher(max_batch_rows=1)
    busy = await occupy(batcher, model)
    queued = asyncio.create_task(batcher.submit([3, 4], [1, 1]))
    await eventually(lambda: batcher.queued_items == 2, "the request to be queued")
    closing = asyncio.create_task(batcher.close(drain=True, timeout=10))
    await eventually(lambda: batcher.closed, "the batcher to stop admitting")
    with pytest.raises(Draining):
        batcher.check_admission()
    with pytest.raises(Draining):
        await batcher.submit([5], [1])
    assert not closing.done()
    model.gate.set()
    await asyncio.wait_for(closing, 5)
    assert await asyncio.gather(*busy, queued) == [[2000], [2002], [6, 8]]
    assert_idle(batcher)


async def test_close_drain_timeout_fails_what_is_left(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    busy = await occupy(batcher, model)
    queued = asyncio.create_task(batcher.submit([3], [1]))
    await eventually(lambda: batcher.queued_items == 1, "the request to be queued")
    await asyncio.wait_for(batcher.close(drain=True, timeout=0.05), 5)
    for task in (*busy, queued):
        with pytest.raises(Draining):
            await task
    assert_idle(batcher)


async def test_close_without_drain_fails_everything_at_once(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher()
    busy = await occupy(batcher, model)
    queued = asyncio.create_task(batcher.submit([3], [1]))
    await eventually(lambda: batcher.queued_items == 1, "the request to be queued")
    await asyncio.wait_for(batcher.close(drain=False), 5)
    for task in (*busy, queued):
        with pytest.raises(Draining):
            await task
    with pytest.raises(Draining):
        await batcher.submit([4], [1])
    assert 3 not in model.ran()
    assert_idle(batcher)


# --- several compute workers ---------------------------------------------------------------------


async def test_workers_run_batches_at_once_and_one_is_formed_ahead(make_batcher: MakeBatcher) -> None:
    batcher, model = await make_batcher(max_batch_tokens=1, workers=2)
    model.gate.clear()
    tasks = [asyncio.create_task(batcher.submit([i], [1])) for i in range(4)]
    # Two batches in run at once (one per worker), the third formed and prepared, the fourth queued.
    await eventually(lambda: len(model.batches) == 2, "two batches to be in run together")
    await eventually(lambda: len(model.prepared) == 3, "a third batch to be prepared behind them")
    assert batcher.queued_items == 1  # the fourth waits: only one batch is ever formed ahead
    model.gate.set()
    assert await asyncio.gather(*tasks) == [[0], [2], [4], [6]]
    assert sorted(map(tuple, model.batches)) == [(0,), (1,), (2,), (3,)]
    assert_idle(batcher)


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        Batcher(
            prepare=list,
            run=list,
            batch_cost=packed,
            max_batch_tokens=1,
            max_batch_rows=1,
            max_queued_requests=1,
            max_queued_tokens=1,
            workers=0,
        )


# --- stress ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "workers"), [(0, 1), (1, 1), (2, 1), (3, 3)])
async def test_stress_every_submit_returns_or_raises(
    make_batcher: MakeBatcher, seed: int, workers: int
) -> None:
    rng = random.Random(seed)
    oom_rng = random.Random(seed + 1000)  # used from the compute thread
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    batcher, model = await make_batcher(max_batch_tokens=32, max_batch_rows=8, workers=workers)
    model.delay = 0.0002
    model.poison = set(range(7, 1200, 40))
    model.oom_if = lambda batch: len(batch) > 6 and oom_rng.random() < 0.5

    requests: list[list[int]] = []
    tasks: list[asyncio.Task[list[int]]] = []
    next_value = 0
    for _ in range(300):
        size = rng.randint(0, 4)
        values = list(range(next_value, next_value + size))
        next_value += size
        tokens = [rng.randint(1, 8) for _ in values]
        deadline = time.monotonic() + rng.uniform(0, 0.05) if rng.random() < 0.2 else None
        requests.append(values)
        tasks.append(asyncio.create_task(batcher.submit(values, tokens, deadline=deadline)))

    async def cancel_some() -> None:
        for task in rng.sample(tasks, 60):
            for _ in range(rng.randint(0, 20)):
                await asyncio.sleep(0)
            task.cancel()

    await asyncio.wait_for(cancel_some(), 10)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    outcomes = {"ok": 0, "cancelled": 0, "deadline": 0, "poison": 0}
    for values, result in zip(requests, results, strict=True):
        if isinstance(result, list):
            assert result == [v * 2 for v in values]
            assert not model.poison & set(values)
            outcomes["ok"] += 1
        elif isinstance(result, asyncio.CancelledError):
            outcomes["cancelled"] += 1
        elif isinstance(result, DeadlineExceeded):
            outcomes["deadline"] += 1
        else:
            assert isinstance(result, ValueError) and model.poison & set(values), result
            outcomes["poison"] += 1
    assert outcomes["ok"] > 100 and min(outcomes.values()) > 0, outcomes  # every path was exercised
    assert loop_errors == []
    assert_idle(batcher)
    model.oom_if = lambda batch: False
    assert await batcher.submit([10_000], [1]) == [20_000]
