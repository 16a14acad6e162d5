"""The Grafana dashboard names only metrics a live server exports, and shows every one of ours.

A real server (tiny model, HTTP + gRPC) is scored over both transports, then its /metrics is the
reference. tests/e2e/test_prometheus.py runs the same expressions through a real Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc
from rewardserve.config import Settings
from rewardserve.testing.dashboard import dashboard_queries, metric_names, to_promql
from rewardserve.testing.server_thread import ServerThread

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "rewardserve.json"

# Metrics with no samples on this CPU-only, scoring-only test server: GPU memory (no CUDA) and the
# policy generator's (no --generator). They must still be declared by /metrics.
NEEDS_GPU_OR_GENERATOR = {
    "rewardserve_gpu_memory_allocated_bytes",
    "rewardserve_gpu_memory_reserved_bytes",
    "rewardserve_gpu_memory_used_bytes",
    "rewardserve_gpu_memory_total_bytes",
    "rewardserve_generated_tokens_total",
    "rewardserve_generation_duration_seconds_bucket",
}


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model=~"$model",x="y{z}"}'
        "[$__rate_interval]))) / on (instance) group_left b and on (job) c_total offset 5m > bool 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c_total"}
    assert metric_names("sum(rate(x[5m])) / sum(rate(y[5m]))") == {"x", "y"}
    assert to_promql(
        'rate(a{m=~"$model"}[$__rate_interval])', rate_interval="1m", variables={"model": ".*"}
    ) == ('rate(a{m=~".*"}[1m])')
    with pytest.raises(ValueError, match="unreplaced"):
        to_promql("a{m=~'$other'}", rate_interval="1m", variables={"model": ".*"})


def _declared(family_name: str, family_type: str) -> set[str]:
    """Series names a family may expose, by type (a counter `x` is exposed as `x_total`)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }.get(family_type, ("",))
    return {family_name + s for s in suffixes}


@pytest.fixture(scope="module")
def live_metrics(tiny_llama: Path) -> Iterator[str]:
    """/metrics of a real server after scoring over HTTP and gRPC (and one refused request)."""
    with (
        ServerThread(Settings(model=tiny_llama, port=0, grpc_port=0)) as srv,
        httpx.Client(base_url=srv.http_url, timeout=60) as http,
    ):
        for i in range(4):
            inputs = [{"prompt": "q", "response": "a" * (i + 1)}, {"text": "t" * (2 * i + 1)}]
            assert http.post("/v1/score", json={"inputs": inputs}).status_code == 200
        assert http.post("/v1/score", json={"inputs": [{}]}).status_code == 422
        with grpc.insecure_channel(srv.grpc_target) as channel:
            pb_grpc.RewardServiceStub(channel).Score(
                pb.ScoreRequest(inputs=[pb.Input(text="via grpc")]), timeout=60
            )
        yield http.get("/metrics").text


def test_dashboard_names_only_exported_metrics(live_metrics: str) -> None:
    families = list(text_string_to_metric_families(live_metrics))
    sampled = {s.name for f in families for s in f.samples}
    declared = set().union(*(_declared(f.name, f.type) for f in families))
    used: set[str] = set()
    queries = dashboard_queries(DASHBOARD)
    assert len(queries) > 20
    for q in queries:
        names = metric_names(q.expr)
        assert names, f"{q.panel!r}: no metric in {q.expr!r}"
        for name in names:
            assert name in declared, f"{q.panel!r} uses {name}, which /metrics does not export: {q.expr}"
            if name not in NEEDS_GPU_OR_GENERATOR:
                assert name in sampled, f"{q.panel!r} uses {name}, which has no samples after a load"
        used |= names
    # The other way round: every rewardserve_ metric has a place on the dashboard.
    ours = [f for f in families if f.name.startswith("rewardserve_") and not f.name.endswith("_created")]
    unused = {f.name for f in ours if not _declared(f.name, f.type) & used}
    assert not unused, f"metrics missing from the dashboard: {sorted(unused)}"


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "rewardserve" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("requests / s", "tokens", "latency", "queue", "batch", "reward", "length", "rejections"):
        assert topic in titles, f"no {topic!r} panel"
