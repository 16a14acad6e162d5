"""/metrics on a real server: request counts, batch and reward histograms, live queue gauges."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewardserve.app import RewardServer, load_scoring
from rewardserve.config import Settings
from rewardserve.metrics import Metrics, RollingCorrelation


@pytest.fixture
async def client(tiny_llama: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model=tiny_llama, port=0)
    metrics = Metrics()
    srv = RewardServer(settings, metrics=metrics, scoring=await load_scoring(settings, metrics))
    await srv.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=30) as c:
        yield c
    await srv.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_what_happened(client: httpx.AsyncClient) -> None:
    for i in range(5):
        body = {"inputs": [{"prompt": "q", "response": "a" * (i + 1)}, {"text": "t" * (3 * i + 1)}]}
        assert (await client.post("/v1/score", json=body)).status_code == 200
    assert (await client.post("/v1/score", json={"inputs": [{}]})).status_code == 422
    s = _samples((await client.get("/metrics")).text)
    assert (
        s[("rewardserve_requests_total", (("code", "200"), ("endpoint", "/v1/score"), ("transport", "http")))]
        == 5
    )
    assert (
        s[("rewardserve_requests_total", (("code", "422"), ("endpoint", "/v1/score"), ("transport", "http")))]
        == 1
    )
    assert s[("rewardserve_rejected_total", (("reason", "validation"),))] == 1
    model = (("model", "default"),)
    assert s[("rewardserve_reward_count", model)] == 10
    assert s[("rewardserve_inputs_scored_total", model)] == 10
    assert s[("rewardserve_tokens_scored_total", model)] > 10
    assert s[("rewardserve_batch_size_sum", model)] == 10  # every input went through exactly one batch
    assert s[("rewardserve_queue_depth", model)] == 0
    assert not math.isnan(s[("rewardserve_reward_length_correlation", model)])
    assert any(k[0] == "process_resident_memory_bytes" for k in s)
    info = [k for k in s if k[0] == "rewardserve_model_info"]
    labels = dict(info[0][1])
    assert len(info) == 1 and labels["batch_strategy"] == "packed" and labels["kernels"].startswith("fused")


def test_rolling_correlation() -> None:
    rc = RollingCorrelation(window=100)
    assert math.isnan(rc.value())
    for i in range(200):
        rc.add(2.0 * i + 1, float(i))
    assert rc.value() == pytest.approx(1.0)
    assert len(rc.pairs) == 100
    for i in range(200):
        rc.add(-float(i), float(i))
    assert rc.value() == pytest.approx(-1.0)
