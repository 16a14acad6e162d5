"""Overload with DEFAULT settings: a real `rewardserve serve` on loopback, offered 150% of its measured
capacity for 60 s. The defaults (max_queue_wait_s above all) must keep goodput at >= 90% of capacity,
answer no 5xx, and refuse the excess with fast 429s instead of letting clients time out.

Rejection latency is measured on the client (the time from sending to the 429), as median and p95 over
every refused call; the client shares this machine's cores with the server, so the median is asserted
and the tail is reported. Run with ``-s`` to see the figures."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BIN = Path(sys.executable).parent / "rewardserve"
# ~8 x 180 tokens a call: the model's compute, not HTTP, is the bottleneck (as with real reward models).
BODY = {"inputs": [{"prompt": f"question {i}?", "response": "a fairly long answer " * 45} for i in range(8)]}


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rewardserve.testing.tiny_models import build_bench_reward_model

    return build_bench_reward_model(tmp_path_factory.mktemp("bench_model"))


@pytest.fixture
def server(bench_model: Path, tmp_path: Path) -> Iterator[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", REWARDSERVE_CACHE_DIR=str(tmp_path))
    args = [str(BIN), "serve", "--model", str(bench_model), "--port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not (m := re.search(r"HTTP on http://[\d.]+:(\d+)", "".join(lines))):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines[-40:])
            time.sleep(0.1)
        url = f"http://127.0.0.1:{m.group(1)}"
        while httpx.get(f"{url}/health/ready", timeout=5).status_code != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines[-40:])
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _tokens_scored(c: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """(now, tokens the server has scored and answered): its own counter, so a rate is server-side."""
    text = (await c.get(f"{url}/metrics")).text
    found = re.findall(r"^rewardserve_tokens_scored_total\{[^}]*\} (\S+)$", text, re.M)
    return time.monotonic(), sum(float(v) for v in found)


async def _rate(c: httpx.AsyncClient, url: str, settle: float, seconds: float) -> float:
    """Tokens/s scored over ``seconds``, after ``settle`` seconds (while the caller's load runs)."""
    await asyncio.sleep(settle)
    t0, k0 = await _tokens_scored(c, url)
    await asyncio.sleep(seconds)
    t1, k1 = await _tokens_scored(c, url)
    return (k1 - k0) / (t1 - t0)


async def _capacity(url: str, seconds: float, workers: int = 6) -> float:
    """Saturated throughput, tokens/s: ``workers`` callers back to back (more than the compute workers
    can take at once, so the device never idles); one refused backs off for its Retry-After."""
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=60) as c:

        async def worker() -> None:
            while not stop.is_set():
                r = await c.post(f"{url}/v1/score", json=BODY)
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("Retry-After", 1)))

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        rate = await _rate(c, url, 2.0, seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return rate


async def _offer(url: str, rate: float, seconds: float) -> tuple[list[tuple[int, float]], float]:
    """Open loop: one call every 1/rate s for ``seconds``, whatever the answers. Returns each call's
    (status, client-side latency) and the server's tokens/s over the window (after 5 s to fill)."""
    results: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:

        async def one() -> None:
            sent = time.monotonic()
            try:
                status = (await c.post(f"{url}/v1/score", json=BODY)).status_code
            except httpx.TimeoutException:
                status = 0  # a client timeout: the failure mode the defaults must prevent
            results.append((status, time.monotonic() - sent))

        async def send() -> None:
            tasks = []
            t0 = time.monotonic()
            for k in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)

        sender = asyncio.create_task(send())
        goodput = await _rate(c, url, 5.0, seconds - 5.0)
        await sender
    return results, goodput


def test_150_percent_of_capacity_with_default_settings(server: str) -> None:
    tokens_per_call = httpx.post(f"{server}/v1/score", json=BODY, timeout=60).json()["usage"]["prompt_tokens"]
    # Capacity is measured before and after the overload and averaged: other work on a shared machine
    # moves it by tens of percent over a minute. Goodput and capacity are both the server's own
    # counter of tokens scored and answered (no client timed out, asserted below, so every one of
    # those answers reached its caller).
    before = asyncio.run(_capacity(server, 6))
    window = 60.0
    results, goodput = asyncio.run(_offer(server, 1.5 * before / tokens_per_call, window))
    after = asyncio.run(_capacity(server, 4))
    capacity = (before + after) / 2
    statuses = [s for s, _ in results]
    rejected = sorted(lat for s, lat in results if s == 429)
    median = statistics.median(rejected) if rejected else 0.0
    p95 = rejected[int(0.95 * (len(rejected) - 1))] if rejected else 0.0
    ok_latency = sorted(lat for s, lat in results if s == 200)
    print(
        f"\ncapacity {capacity:.0f} tokens/s = {capacity / tokens_per_call:.2f} calls/s "
        f"(before {before:.0f}, after {after:.0f}); offered {1.5 * before / tokens_per_call:.2f} calls/s "
        f"for {window:.0f}s: goodput {goodput:.0f} tokens/s = {goodput / capacity:.2f}x capacity; "
        f"{statuses.count(200)} x 200, {len(rejected)} x 429 (client-side latency median "
        f"{median * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms); 200 latency p50 "
        f"{statistics.median(ok_latency):.2f}s p99 {ok_latency[int(0.99 * (len(ok_latency) - 1))]:.2f}s; "
        f"other statuses {sorted(set(statuses) - {200, 429})}"
    )
    assert set(statuses) <= {200, 429}, f"5xx or client timeouts (0): {sorted(set(statuses))}"
    assert rejected, "150% of capacity for 60 s was never refused: the defaults do not bound the queue"
    if abs(after - before) > 0.3 * min(before, after):
        # Other work on the machine started or stopped meanwhile (seen in a full-suite run: 10k
        # before, 18k after): the window's capacity is unknown, so goodput cannot be judged.
        pytest.skip(f"capacity moved from {before:.0f} to {after:.0f} tokens/s during the test: rerun quiet")
    assert goodput >= 0.9 * capacity
    assert median < 0.05
