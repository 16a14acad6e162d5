"""metrics.py on its own: names and types, the reward sum counters, the GPU memory gauges."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewardserve.metrics import Metrics


def _families(m: Metrics) -> dict[str, tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
        out[fam.name] = (fam.type, samples)
    return out


def test_every_metric_the_issue_lists_is_exported_with_its_type() -> None:
    fams = _families(Metrics())
    want = {
        "rewardserve_requests": "counter",
        "rewardserve_request_duration_seconds": "histogram",
        "rewardserve_queue_duration_seconds": "histogram",
        "rewardserve_tokenize_duration_seconds": "histogram",
        "rewardserve_inference_duration_seconds": "histogram",
        "rewardserve_batch_size": "histogram",
        "rewardserve_batch_tokens": "histogram",
        "rewardserve_batch_padding_ratio": "histogram",
        "rewardserve_queue_depth": "gauge",
        "rewardserve_queue_tokens": "gauge",
        "rewardserve_tokens_scored": "counter",
        "rewardserve_inputs_scored": "counter",
        "rewardserve_rejected": "counter",
        "rewardserve_model_info": "gauge",
        "rewardserve_reward": "histogram",
        "rewardserve_reward_positive_sum": "counter",
        "rewardserve_reward_negative_sum": "counter",
        "rewardserve_reward_length_correlation": "gauge",
        "rewardserve_generated_tokens": "counter",
        "rewardserve_generation_duration_seconds": "histogram",
        "rewardserve_gpu_memory_allocated_bytes": "gauge",
        "rewardserve_gpu_memory_reserved_bytes": "gauge",
        "rewardserve_gpu_memory_used_bytes": "gauge",
        "rewardserve_gpu_memory_total_bytes": "gauge",
        "process_resident_memory_bytes": "gauge",
    }
    assert {name: fams[name][0] for name in want} == want


def test_reward_mean_comes_from_the_signed_sums() -> None:
    """The reward histogram has negative buckets, so prometheus_client exposes no _sum for it; the
    two counters give the sum instead, and NaN/inf rewards are left out of everything."""
    m = Metrics()
    rewards = [1.5, -2.0, 0.0, 3.25, -0.75, float("nan")]
    m.observe_rewards("rm", rewards, [float(i) for i in range(len(rewards))])
    fams = _families(m)
    label = (("model", "rm"),)
    assert ("rewardserve_reward_sum", label) not in fams["rewardserve_reward"][1]
    count = fams["rewardserve_reward"][1][("rewardserve_reward_count", label)]
    positive = fams["rewardserve_reward_positive_sum"][1][("rewardserve_reward_positive_sum_total", label)]
    negative = fams["rewardserve_reward_negative_sum"][1][("rewardserve_reward_negative_sum_total", label)]
    assert (count, positive, negative) == (5, 4.75, 2.75)
    assert (positive - negative) / count == pytest.approx(sum(rewards[:5]) / 5)


def test_a_scrape_never_imports_torch() -> None:
    """A process that never used torch (a client, a CPU-only sidecar) must not load it, nor create a
    CUDA context, just because it was scraped; the GPU families are declared without samples."""
    code = (
        "import sys\n"
        "from rewardserve.metrics import Metrics\n"
        "text = Metrics().render().decode()\n"
        "assert '# TYPE rewardserve_gpu_memory_used_bytes gauge' in text\n"
        "assert 'rewardserve_gpu_memory_used_bytes{' not in text\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_gpu_memory_is_read_per_device_once_cuda_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA initialised, one sample per device and gauge. torch's CUDA calls are replaced by a
    stand-in (no GPU here); what is checked is which calls feed which gauge."""
    gib = 2**30
    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 2,
        mem_get_info=lambda i: ((70 - i) * gib, 80 * gib),  # (free, total)
        memory_allocated=lambda i: (3 + i) * gib,
        memory_reserved=lambda i: (4 + i) * gib,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    fams = _families(Metrics())

    def value(name: str, device: str) -> float:
        return fams[name][1][(name, (("device", device),))]

    for i in range(2):
        dev = f"cuda:{i}"
        assert value("rewardserve_gpu_memory_allocated_bytes", dev) == (3 + i) * gib
        assert value("rewardserve_gpu_memory_reserved_bytes", dev) == (4 + i) * gib
        assert value("rewardserve_gpu_memory_used_bytes", dev) == (10 + i) * gib
        assert value("rewardserve_gpu_memory_total_bytes", dev) == 80 * gib

    cuda.is_initialized = lambda: False  # torch imported, GPU never used: nothing to report
    assert _families(Metrics())["rewardserve_gpu_memory_used_bytes"][1] == {}
