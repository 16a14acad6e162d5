"""A real Prometheus scrapes a real `rewardserve serve` under a scoring load, and the Grafana
dashboard's queries, run through Prometheus' HTTP API, give the right answers.

Prometheus is the Debian package (`make system-deps` installs it); without it this test FAILS, it
does not skip. Both processes listen on loopback only, on free ports, and are stopped in a finally.
Waits poll with a bound: nothing sleeps for a fixed time hoping a scrape happened.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest

from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc
from rewardserve.metrics import REWARD_BUCKETS
from rewardserve.testing.dashboard import Query, dashboard_queries, to_promql
from rewardserve.testing.ports import free_port

BIN = Path(sys.executable).parent / "rewardserve"
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "rewardserve.json"
# Panels with nothing to show on this CPU-only, scoring-only server that never fails a request.
EMPTY_HERE = {"GPU memory", "Generated tokens / s", "Generation latency p50 / p99", "Server error ratio"}
# Long enough to cover the whole test, so rate() sees every sample since the first scrape.
RATE_INTERVAL = "5m"
T = TypeVar("T")


class Process:
    """A subprocess whose output is collected in the background (for failure messages)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines[-40:])

    def check_alive(self, what: str) -> None:
        if self.p.poll() is not None:
            pytest.fail(f"{what} exited ({self.p.returncode}):\n{self.log()}")

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(30)


def poll(fn: Callable[[], T | None], timeout: float, what: str, alive: Callable[[], None]) -> T:
    """``fn()`` until it returns something other than None/False, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        alive()
        try:
            result = fn()
        except (httpx.TransportError, AssertionError) as exc:
            result, last = None, exc
        if result is not None and result is not False:
            return result
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout}s (last error: {last!r})")


@pytest.fixture
def rewardserve(tiny_llama: Path, tmp_path: Path) -> Iterator[tuple[Process, int, int]]:
    """`rewardserve serve` on free ports: (process, HTTP port, gRPC port)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", REWARDSERVE_CACHE_DIR=str(tmp_path / "cache"))
    env.update(REWARDSERVE_GRPC_PORT="0")
    proc = Process([str(BIN), "serve", "--model", str(tiny_llama), "--port", "0"], env)
    try:

        def ports() -> tuple[int, int] | None:
            text = "".join(proc.lines)
            http = re.search(r"HTTP on http://[\d.]+:(\d+)", text)
            grpc_port = re.search(r"gRPC on [\d.]+:(\d+)", text)
            return (int(http.group(1)), int(grpc_port.group(1))) if http and grpc_port else None

        def alive() -> None:
            proc.check_alive("rewardserve")

        http_port, grpc_port = poll(ports, 120, "rewardserve listening", alive)
        ready = f"http://127.0.0.1:{http_port}/health/ready"
        poll(lambda: httpx.get(ready, timeout=5).status_code == 200, 120, "rewardserve ready", alive)
        yield proc, http_port, grpc_port
    finally:
        proc.close()


@pytest.fixture
def prometheus_binary() -> str:
    """The prometheus binary; missing is a failure (CI installs it), never a skip."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "the prometheus binary is not installed: run `make system-deps` (as root it runs "
            "`apt-get install --no-install-recommends prometheus`), or install Debian/Ubuntu's "
            "`prometheus` package yourself"
        )
    return binary


@pytest.fixture
def prometheus(
    prometheus_binary: str, rewardserve: tuple[Process, int, int], tmp_path: Path
) -> Iterator[tuple[Process, str]]:
    """A real Prometheus scraping that server every second: (process, API base URL)."""
    binary = prometheus_binary
    _, http_port, _ = rewardserve
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: rewardserve\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{http_port}']\n"
    )
    port = free_port()
    proc = Process(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll(
            lambda: httpx.get(f"{url}/-/ready", timeout=5).status_code == 200,
            60,
            "Prometheus ready",
            lambda: proc.check_alive("prometheus"),
        )
        yield proc, url
    finally:
        proc.close()


def test_dashboard_queries_through_real_prometheus(
    prometheus_binary: str, rewardserve: tuple[Process, int, int], prometheus: tuple[Process, str]
) -> None:
    server, http_port, grpc_port = rewardserve
    prom, prom_url = prometheus
    api = httpx.Client(base_url=prom_url, timeout=30)

    def alive() -> None:
        server.check_alive("rewardserve")
        prom.check_alive("prometheus")

    def query(expr: str) -> list[dict[str, Any]]:
        body = api.get("/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(expr: str) -> float | None:
        result = query(expr)
        return float(result[0]["value"][1]) if result else None

    def scraped(expected: float) -> Callable[[], bool]:
        return lambda: scalar('sum(rewardserve_requests_total{endpoint="/v1/score",code="200"})') == expected

    poll(lambda: scalar('up{job="rewardserve"}') == 1, 60, "first scrape", alive)

    # The load, in two phases with a scrape between them, so every rate() has an increase to see.
    scores: list[float] = []
    tokens = 0
    sent_ok = sent_bad = sent_grpc = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:
        for phase in range(2):
            for i in range(6):
                inputs = [{"prompt": "q", "response": "r" * (1 + 7 * i + phase)} for _ in range(1 + i % 3)]
                answer = http.post("/v1/score", json={"inputs": inputs}).json()
                scores += answer["scores"]
                tokens += sum(d["tokens"] for d in answer["details"])
                sent_ok += 1
            assert http.post("/v1/score", json={"inputs": [{"nope": 1}]}).status_code == 422
            sent_bad += 1
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = pb_grpc.RewardServiceStub(channel)
                for i in range(2):
                    reply = stub.Score(pb.ScoreRequest(inputs=[pb.Input(text="g" * (3 + i))]), timeout=60)
                    scores += reply.scores
                    tokens += sum(d.tokens for d in reply.details)
                    sent_grpc += 1
            poll(scraped(sent_ok), 60, f"Prometheus scraped load phase {phase}", alive)
        correlation = _gauge(http.get("/metrics").text, "rewardserve_reward_length_correlation")

    # Every dashboard query is valid PromQL and, but for the panels this server cannot feed, has data
    # (rates need two scrapes after a series appears: poll, bounded).
    queries = dashboard_queries(DASHBOARD)
    variables = {"model": ".*"}

    def promql(q: Query) -> str:
        return to_promql(q.expr, rate_interval=RATE_INTERVAL, variables=variables)

    def all_have_data() -> bool:
        return all(query(promql(q)) for q in queries if q.panel not in EMPTY_HERE)

    poll(all_have_data, 60, "every dashboard query returning data", alive)
    results = {q.expr: query(promql(q)) for q in queries}
    for q in queries:
        if q.panel in EMPTY_HERE:
            assert results[q.expr] == [], f"{q.panel}: {results[q.expr]}"

    def panel(title: str, index: int = 0) -> list[dict[str, Any]]:
        exprs = [q.expr for q in queries if q.panel == title]
        assert exprs, f"no panel {title!r}"
        return results[exprs[index]]

    def one(series: list[dict[str, Any]], **labels: str) -> float:
        values = [float(s["value"][1]) for s in series if labels.items() <= s["metric"].items()]
        assert len(values) == 1, f"{labels} in {series}"
        return values[0]

    # Totals: exact.
    answered = panel("Answered since start (per replica)")
    assert one(answered, transport="http", endpoint="/v1/score", code="200") == sent_ok
    assert one(answered, transport="http", endpoint="/v1/score", code="422") == sent_bad
    grpc_score = "/rewardserve.v1.RewardService/Score"
    assert one(answered, transport="grpc", endpoint=grpc_score, code="OK") == sent_grpc
    assert scalar('sum(rewardserve_requests_total{endpoint="/v1/score",code="200"})') == sent_ok
    assert one(panel("Rewards since start", 0), model="default") == len(scores)
    assert one(panel("Rewards since start", 1), model="default") == pytest.approx(
        sum(scores) / len(scores), abs=1e-6
    )
    assert scalar("sum(rewardserve_tokens_scored_total)") == tokens
    assert scalar("sum(rewardserve_inputs_scored_total)") == len(scores)
    assert scalar("sum(rewardserve_batch_size_sum)") == len(scores)  # each input in exactly one batch
    (info,) = panel("Served models")
    assert info["metric"]["model"] == "default" and info["metric"]["batch_strategy"] == "packed"
    assert info["metric"]["kernels"].startswith("fused")

    # Rates and quantiles: consistent with what was sent.
    assert one(panel("Requests / s"), transport="http", endpoint="/v1/score", code="200") > 0
    assert one(panel("Requests / s"), transport="grpc", endpoint=grpc_score, code="OK") > 0
    assert one(panel("Tokens and inputs scored / s", 0), model="default") > 0
    assert one(panel("Rejections / s by reason"), reason="validation") > 0
    p50 = one(panel("Request latency p50 / p99", 0), transport="http", endpoint="/v1/score")
    p99 = one(panel("Request latency p50 / p99", 1), transport="http", endpoint="/v1/score")
    assert 0 < p50 <= p99
    assert one(panel("Queue depth"), model="default") == 0  # all answered
    assert one(panel("Batch size (sequences)", 0), model="default") >= 1
    assert 0 <= one(panel("Padding ratio"), model="default") <= 1
    low = max(b for b in (-math.inf, *REWARD_BUCKETS) if b <= min(scores))
    high = min(b for b in (*REWARD_BUCKETS, math.inf) if b >= max(scores))
    quantiles = [one(panel("Reward distribution over time", i), model="default") for i in range(3)]
    assert low <= quantiles[0] <= quantiles[1] <= quantiles[2] <= high, (quantiles, low, high)
    windowed_mean = one(panel("Reward distribution over time", 3), model="default")
    assert min(scores) - 1e-9 <= windowed_mean <= max(scores) + 1e-9
    assert one(panel("Reward vs response length (correlation)"), model="default") == pytest.approx(
        correlation
    )
    assert one(panel("Process memory")) > 0
    assert one(panel("Process CPU")) >= 0


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))
