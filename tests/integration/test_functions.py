"""Reward functions in real worker processes: timeouts kill and replace, failures stay per input."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from rewardserve.errors import ConfigError, Draining
from rewardserve.functions.pool import WorkerPool
from rewardserve.functions.source import FunctionConfig, FunctionSource, parse_function
from rewardserve.metrics import Metrics
from rewardserve.scoring.types import ScoreInput, ScoreOptions

USER_FUNCTIONS = textwrap.dedent(
    """
    import math
    import os
    import time

    def behave(*, prompt, response, label, metadata, **kwargs):
        if response == "sleep":
            while True:
                time.sleep(1)
        if response == "boom":
            raise ValueError("cannot score " + response)
        if response == "die":
            os._exit(7)
        if response == "nan":
            return math.nan
        if response == "text":
            return "high"
        if response == "dict":
            return {"score": 0.25, "passed": 3, "failed": [1, 2], "label_seen": label}
        if response == "slow":
            time.sleep(1.0)
            return 0.5
        if response == "pid":
            return {"score": 1.0, "pid": os.getpid()}
        return float(len(response))
    """
)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FUNCTIONS)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_hung_call_is_killed_and_the_pool_recovers(user_file: Path) -> None:
    # The timeout leaves a wide margin for the five quick calls on a loaded 2-core machine.
    pool = WorkerPool(f"{user_file}:behave", workers=2, timeout_s=8.0, name="t")
    await pool.start()
    try:
        first = await pool.call({"prompt": "", "response": "pid", "label": None, "metadata": None})
        pids_before = set(pool.pids)
        hung = asyncio.create_task(
            pool.call({"prompt": "", "response": "sleep", "label": None, "metadata": None})
        )
        # While one worker hangs, the other keeps answering: these finish before the hung call does.
        quick = [
            await pool.call({"prompt": "", "response": "x" * n, "label": None, "metadata": None})
            for n in range(1, 6)
        ]
        assert not hung.done()
        assert [q.score for q in quick] == [1.0, 2.0, 3.0, 4.0, 5.0]
        result = await hung
        assert result.status == "timeout" and result.score is None
        assert "killed and replaced" in (result.error or "")
        assert pool.replaced == 1
        # The hung worker is gone; the pool is back to full size with a fresh process.
        # Polled, not slept: spawning the replacement and reaping the killed process take seconds on
        # a loaded 2-core machine.
        killed: set[int] = set()
        for _ in range(1200):
            killed = pids_before - set(pool.pids)
            if len(pool.pids) == 2 and len(killed) == 1 and not _alive(next(iter(killed))):
                break
            await asyncio.sleep(0.05)
        assert len(pool.pids) == 2
        assert len(killed) == 1 and not _alive(killed.pop())
        again = await asyncio.gather(
            *(pool.call({"prompt": "", "response": "ab", "label": None, "metadata": None}) for _ in range(4))
        )
        assert all(r.status == "ok" and r.score == 2.0 for r in again)
        assert first.extras is not None and first.extras["pid"] in pids_before
    finally:
        pids = pool.pids
        await pool.close()
    assert pool.pids == []
    assert not any(_alive(p) for p in pids)


async def test_failures_are_per_input_and_typed(user_file: Path) -> None:
    metrics = Metrics()
    source = FunctionSource(
        FunctionConfig(name="behave", target=f"{user_file}:behave", workers=2, timeout_s=30), metrics=metrics
    )
    await source.start()
    try:
        inputs = [
            ScoreInput(prompt="q", response="fine"),
            ScoreInput(prompt="q", response="boom"),
            ScoreInput(prompt="q", response="dict", label={"tests": 5}),
            ScoreInput(prompt="q", response="nan"),
            ScoreInput(prompt="q", response="text"),
            ScoreInput(prompt="q", response="die"),
            ScoreInput(prompt="q", response="ok"),
        ]
        results = await source.score(inputs, ScoreOptions())
        fine, boom, as_dict, nan, text, died, ok = results
        assert (fine.score, fine.status, fine.mask) == (4.0, "ok", False)
        assert (boom.score, boom.status, boom.mask) == (None, "error", True)
        assert boom.error == "ValueError: cannot score boom"
        assert as_dict.score == 0.25 and as_dict.status == "ok"
        assert as_dict.extras == {"passed": 3, "failed": [1, 2], "label_seen": {"tests": 5}}
        assert nan.status == "error" and "non-finite" in (nan.error or "")
        assert text.status == "error" and "returned str" in (text.error or "")
        assert died.status == "error" and "died (exit code 7)" in (died.error or "")
        assert ok.score == 2.0
        # The dead worker was replaced: the pool still answers.
        after = await source.score([ScoreInput(prompt="q", response="abc")], ScoreOptions())
        assert after[0].score == 3.0
        text_metrics = metrics.render().decode()
        assert 'rewardserve_reward_results_total{model="behave",status="ok"} 4.0' in text_metrics
        assert 'rewardserve_reward_results_total{model="behave",status="error"} 4.0' in text_metrics
    finally:
        await source.close()
    assert source.pool.pids == []


async def test_builtin_math_in_workers() -> None:
    source = FunctionSource(FunctionConfig(name="math", workers=1))
    await source.start()
    try:
        card = source.card()
        assert card["kind"] == "function" and card["builtin"] and card["function"] == "math"
        results = await source.score(
            [
                ScoreInput(prompt="half?", response="It is \\boxed{\\frac{1}{2}}", label="0.5"),
                ScoreInput(prompt="half?", response="It is \\boxed{3}", label="0.5"),
                ScoreInput(messages=None, text="no answer at all", label="0.5"),
                ScoreInput(prompt="half?", response="1/2", label=None),
            ],
            ScoreOptions(),
        )
        assert [r.score for r in results[:3]] == [1.0, 0.0, 0.0]
        assert results[3].status == "error" and "needs a label" in (results[3].error or "")
    finally:
        await source.close()


async def test_a_target_that_does_not_load_fails_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_anywhere\n")
    source = FunctionSource(FunctionConfig(name="bad", target=f"{bad}:fn", workers=1))
    with pytest.raises(ConfigError, match="not_a_module_anywhere"):
        await source.start()
    assert source.pool.pids == []
    missing = FunctionSource(FunctionConfig(name="m", target="json:no_such_function", workers=1))
    with pytest.raises(ConfigError, match="has no function 'no_such_function'"):
        await missing.start()


async def test_close_with_calls_waiting(user_file: Path) -> None:
    pool = WorkerPool(f"{user_file}:behave", workers=1, timeout_s=60.0, name="t")
    await pool.start()
    hung = asyncio.create_task(
        pool.call({"prompt": "", "response": "sleep", "label": None, "metadata": None})
    )
    waiting = asyncio.create_task(pool.call({"prompt": "", "response": "a", "label": None, "metadata": None}))
    await asyncio.sleep(0.2)
    pids = pool.pids
    await pool.close(drain=False)
    for task in (hung, waiting):
        with pytest.raises(Draining):
            await task
    assert not any(_alive(p) for p in pids)
    with pytest.raises(Draining):
        await pool.call({"prompt": "", "response": "a", "label": None, "metadata": None})


def test_config_parsing(tmp_path: Path, user_file: Path) -> None:
    entry = parse_function({"name": "t", "target": "my_rewards.py:behave"}, "functions[0]", tmp_path)
    assert entry.kind == "function"
    assert entry.plan.target == f"{user_file.resolve()}:behave" and entry.plan.timeout_s == 10.0
    assert parse_function({"name": "math"}, "functions[1]", tmp_path).plan.resolved_target == "math"
    with pytest.raises(ConfigError, match="no target and no built-in"):
        parse_function({"name": "mystery"}, "functions[2]", tmp_path)
    with pytest.raises(ConfigError, match="file not found"):
        parse_function({"name": "x", "target": "nope.py:f"}, "functions[3]", tmp_path)
    with pytest.raises(ConfigError, match="timeout_s"):
        parse_function({"name": "math", "timeout_s": 0}, "functions[4]", tmp_path)


async def test_a_cancelled_call_gives_its_worker_back(user_file: Path) -> None:
    """A caller that goes away does not cost a process: the call ends in the background and the
    worker serves the next call (no kill, no replacement)."""
    pool = WorkerPool(f"{user_file}:behave", workers=1, timeout_s=30.0, name="t")
    await pool.start()
    try:
        (pid,) = pool.pids
        task = asyncio.create_task(
            pool.call({"prompt": "", "response": "slow", "label": None, "metadata": None})
        )
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = await pool.call({"prompt": "", "response": "pid", "label": None, "metadata": None})
        assert after.status == "ok" and after.extras == {"pid": pid}
        assert pool.replaced == 0
    finally:
        await pool.close()


async def test_the_request_deadline_bounds_the_call(user_file: Path) -> None:
    import time

    source = FunctionSource(FunctionConfig(name="t", target=f"{user_file}:behave", workers=1, timeout_s=60))
    await source.start()
    try:
        deadline = time.monotonic() + 0.5
        hung, queued = await source.score(
            [ScoreInput(prompt="", response="sleep"), ScoreInput(prompt="", response="x")],
            ScoreOptions(deadline=deadline),
        )
        assert hung.status == "timeout" and "deadline" in (hung.error or "")
        assert queued.status == "timeout" and "deadline" in (queued.error or "")
        (ok,) = await source.score([ScoreInput(prompt="", response="xy")], ScoreOptions())
        assert ok.score == 2.0
    finally:
        await source.close()


def test_workers_exit_when_the_server_is_killed(user_file: Path, tmp_path: Path) -> None:
    """SIGKILL of the server (no close(), no atexit): its workers, even one stuck in a call, exit."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys
            from rewardserve.functions.pool import WorkerPool

            async def main():
                pool = WorkerPool({str(user_file) + ":behave"!r}, workers=2, timeout_s=600, name="t")
                await pool.start()
                hang = {{"prompt": "", "response": "sleep", "label": None, "metadata": None}}
                task = asyncio.create_task(pool.call(hang))
                await asyncio.sleep(0.5)
                print(" ".join(map(str, pool.pids)), flush=True)
                await asyncio.sleep(600)

            if __name__ == "__main__":
                asyncio.run(main())
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for _ in range(300):  # the workers notice within about a second
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
