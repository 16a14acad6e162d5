"""The batcher under faults and overload: admission at arrival, the queue-wait bound, per-result
checks (a NaN fails its own request only), the watchdog's view of a stuck run, a dead loop."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from rewardserve.errors import Draining, InputError, NonFiniteReward, Overloaded
from rewardserve.scoring.batcher import Batcher

pytestmark = pytest.mark.timeout(30)

FloatBatcher = Batcher[float, list[float], float]


class _Fault(BaseException):
    """Not an Exception: gets past the loops' ``except Exception``, as a real bug in them would."""


class Model:
    """Returns its inputs; ``gate`` holds ``run``; ``delay`` slows it; ``fault`` kills the loop."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.delay = 0.0
        self.fault = False
        self.runs = 0

    def run(self, batch: list[float]) -> list[float]:
        self.runs += 1
        assert self.gate.wait(20)
        if self.fault:
            raise _Fault("injected")
        time.sleep(self.delay)
        return list(batch)


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) for a state the test then asserts on."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "timed out waiting for the batcher"
        await asyncio.sleep(0.001)


def _check(index: int, value: float) -> Exception | None:
    return None if math.isfinite(value) else NonFiniteReward(f"non-finite reward for input {index}")


@pytest.fixture
async def made() -> AsyncIterator[list[tuple[FloatBatcher, Model]]]:
    out: list[tuple[FloatBatcher, Model]] = []
    yield out
    for batcher, model in out:
        model.gate.set()
        await batcher.close(drain=False)


async def _make(made: list[tuple[FloatBatcher, Model]], **kw: float | int) -> tuple[FloatBatcher, Model]:
    model = Model()
    settings: dict[str, float | int] = {
        "max_batch_tokens": 1000,
        "max_batch_rows": 64,
        "max_queued_requests": 1000,
        "max_queued_tokens": 100_000,
        **kw,
    }
    batcher: FloatBatcher = Batcher(
        prepare=list,
        run=model.run,
        batch_cost=lambda t: sum(t),
        check_result=_check,
        **settings,  # type: ignore[arg-type]
    )
    await batcher.start()
    made.append((batcher, model))
    return batcher, model


async def test_nan_fails_its_own_request_only(made: list[tuple[FloatBatcher, Model]]) -> None:
    batcher, model = await _make(made)
    model.gate.clear()  # all 8 requests land in one batch
    requests: list[Sequence[float]] = [[float(i), float(i) + 0.5] for i in range(8)]
    requests[3] = [3.0, math.nan]
    tasks = [asyncio.create_task(batcher.submit(r, [1, 1])) for r in requests]
    await _until(lambda: batcher.queued_requests == 8)
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i == 3:
            assert isinstance(result, NonFiniteReward) and "input 1" in str(result)
        else:
            assert result == requests[i]


async def test_admission_slot_is_held_from_arrival(made: list[tuple[FloatBatcher, Model]]) -> None:
    batcher, _ = await _make(made, max_queued_requests=2)
    with batcher.admit(10), batcher.admit(10):  # two calls still tokenizing: nothing submitted yet
        assert batcher.queued_requests == 0 and batcher.admitted == 2
        with pytest.raises(Overloaded), batcher.admit(1):
            pass
    assert batcher.admitted == 0
    with batcher.admit(5) as slot:  # the estimate becomes the real count at submit
        assert await batcher.submit([1.0, 2.0], [3, 4], admission=slot) == [1.0, 2.0]
        assert slot.tokens == 7
    assert batcher.admitted == 0


async def test_one_call_over_max_queued_tokens_is_a_client_error(
    made: list[tuple[FloatBatcher, Model]],
) -> None:
    batcher, _ = await _make(made, max_queued_tokens=100)
    with pytest.raises(InputError, match=r"max_queued_tokens=100.*split it"), batcher.admit(101):
        pass


async def test_queue_wait_bound_refuses_fast(made: list[tuple[FloatBatcher, Model]]) -> None:
    batcher, model = await _make(made, max_queue_wait_s=0.5, max_batch_tokens=100)
    model.delay = 0.05
    await batcher.submit([1.0], [100])  # measures ~2,000 tokens/s
    rate = batcher.tokens_per_second
    assert rate is not None and 500 < rate < 2100
    model.gate.clear()
    held = [asyncio.create_task(_admitted_submit(batcher, 100)) for _ in range(4)]
    await _until(lambda: batcher.admitted == 4)
    # 400 tokens ahead at <= 2,000/s is under 0.5 s; the next 100 may still fit; 2,000 more never do.
    with pytest.raises(Overloaded) as info, batcher.admit(2000):
        pass
    assert "max_queue_wait_s=0.5" in str(info.value) and info.value.retry_after_s
    model.gate.set()
    await asyncio.gather(*held)
    assert batcher.admitted == 0


async def _admitted_submit(batcher: FloatBatcher, tokens: int) -> list[float]:
    with batcher.admit(tokens) as slot:
        return await batcher.submit([1.0], [tokens], admission=slot)


async def test_stalled_seconds_sees_a_stuck_run(made: list[tuple[FloatBatcher, Model]]) -> None:
    batcher, model = await _make(made)
    assert batcher.stalled_seconds() == 0.0
    model.gate.clear()
    task = asyncio.create_task(batcher.submit([1.0], [1]))
    await _until(lambda: model.runs > 0)
    assert batcher.stalled_seconds(time.monotonic() + 5) >= 5
    model.gate.set()
    await task
    assert batcher.stalled_seconds() == 0.0


async def test_dead_loop_is_reported_and_fails_in_flight(made: list[tuple[FloatBatcher, Model]]) -> None:
    batcher, model = await _make(made)
    model.fault = True
    with pytest.raises(Draining, match="stopped unexpectedly"):
        await batcher.submit([1.0], [1])
    assert batcher.dead is not None and "_Fault" in batcher.dead
    with pytest.raises(Draining):
        await batcher.submit([1.0], [1])


async def test_a_backlog_that_fits_in_one_batch_is_never_refused_on_time(
    made: list[tuple[FloatBatcher, Model]],
) -> None:
    # Only a tiny, overhead-bound batch was measured (~20 tokens/s), then a burst arrives: its 500
    # tokens would "take" 25 s at that rate, but they fit in one batch of 1,000 and run at once.
    batcher, model = await _make(made, max_queue_wait_s=0.5, max_batch_tokens=1000)
    model.delay = 0.05
    await batcher.submit([1.0], [1])
    rate = batcher.tokens_per_second
    assert rate is not None and rate < 100
    model.gate.clear()
    burst = [asyncio.create_task(_admitted_submit(batcher, 50)) for _ in range(10)]
    await _until(lambda: batcher.admitted == 10)
    model.gate.set()
    assert await asyncio.gather(*burst) == [[1.0]] * 10
    # Past one batch of work, the time bound applies (the rate is now the 500-token batch's, ~5k/s).
    model.gate.clear()
    held = [asyncio.create_task(_admitted_submit(batcher, 1000))]  # one batch: always admitted
    await _until(lambda: batcher.admitted == 1)
    with pytest.raises(Overloaded, match="max_queue_wait_s"), batcher.admit(5000):  # ~1.2 s of work
        pass
    model.gate.set()
    await asyncio.gather(*held)
