"""Every Prometheus metric the service exports, defined once (names, units, buckets).

Each server owns a ``Metrics`` with its own registry, so several servers in one process (tests) do not
mix their counts. Names carry the ``rewardserve_`` prefix and their unit (``_seconds``, ``_tokens``,
``_total``). Gauges that mirror live state (queue depth, GPU memory) are read at scrape time by a
collector instead of being kept in sync by hand.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Buckets, defined here and nowhere else.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
REWARD_BUCKETS = (-20, -10, -5, -4, -3, -2, -1.5, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 10, 20)

# How many recent (reward, length) pairs the length-bias correlation looks at.
CORRELATION_WINDOW = 2048


@dataclass
class RollingCorrelation:
    """Pearson correlation of reward with response length over the last ``window`` samples.

    Reward hacking often shows first as rewards that track length instead of quality: a correlation
    drifting towards 1 during a run is the signal to look at.
    """

    window: int = CORRELATION_WINDOW
    pairs: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, reward: float, length: float) -> None:
        self.pairs.append((reward, length))
        while len(self.pairs) > self.window:
            self.pairs.popleft()

    def value(self) -> float:
        n = len(self.pairs)
        if n < 3:
            return math.nan
        mr = sum(r for r, _ in self.pairs) / n
        ml = sum(x for _, x in self.pairs) / n
        cov = sum((r - mr) * (x - ml) for r, x in self.pairs)
        vr = sum((r - mr) ** 2 for r, _ in self.pairs)
        vl = sum((x - ml) ** 2 for _, x in self.pairs)
        if vr == 0 or vl == 0:
            return math.nan
        return cov / math.sqrt(vr * vl)


class _LiveState(Collector):
    """Gauges read when Prometheus scrapes: queue depth/tokens, length correlation, GPU memory."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "rewardserve_queue_depth", "Scoring requests admitted and not yet answered.", labels=["model"]
        )
        tokens = GaugeMetricFamily(
            "rewardserve_queue_tokens", "Tokens waiting for a batch.", labels=["model"]
        )
        corr = GaugeMetricFamily(
            "rewardserve_reward_length_correlation",
            f"Pearson correlation of reward with response length (characters) over the last "
            f"{CORRELATION_WINDOW} scored inputs; NaN until there are 3.",
            labels=["model"],
        )
        for model, probe in self.metrics.queue_probes.items():
            requests, queued_tokens = probe()
            depth.add_metric([model], requests)
            tokens.add_metric([model], queued_tokens)
        for model, rc in self.metrics.correlations.items():
            corr.add_metric([model], rc.value())
        yield depth
        yield tokens
        yield corr
        yield from _gpu_memory_families()


# (name, help) of the per-device GPU memory gauges. They are always declared, with no samples on a
# machine without CUDA, so dashboards and alerts can name them everywhere.
_GPU_GAUGES = (
    ("rewardserve_gpu_memory_allocated_bytes", "GPU memory held by this process's tensors."),
    (
        "rewardserve_gpu_memory_reserved_bytes",
        "GPU memory held by this process's torch caching allocator (allocated + cached free blocks).",
    ),
    (
        "rewardserve_gpu_memory_used_bytes",
        "GPU memory in use on the device by every process (the driver's view: includes the vLLM "
        "engine's process and CUDA contexts).",
    ),
    ("rewardserve_gpu_memory_total_bytes", "GPU memory of the device."),
)


def _gpu_memory_families() -> list[GaugeMetricFamily]:
    families = [GaugeMetricFamily(name, doc, labels=["device"]) for name, doc in _GPU_GAUGES]
    for device, values in _gpu_memory():
        for family, value in zip(families, values, strict=True):
            family.add_metric([device], value)
    return families


def _gpu_memory() -> list[tuple[str, tuple[float, float, float, float]]]:
    """(device, (allocated, reserved, used, total)) for each CUDA device; none without CUDA.

    torch is only consulted when something already imported it and initialised CUDA: a scrape must
    not import torch, nor create a CUDA context (hundreds of MiB per device) in a process that never
    used the GPU.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        allocated = float(torch.cuda.memory_allocated(i))
        reserved = float(torch.cuda.memory_reserved(i))
        out.append((f"cuda:{i}", (allocated, reserved, float(total - free), float(total))))
    return out


class Metrics:
    """The service's metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        self.requests = Counter(
            "rewardserve_requests",
            "Requests answered, by transport, endpoint and status code.",
            ["transport", "endpoint", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "rewardserve_request_duration_seconds",
            "Time from request received to response sent.",
            ["transport", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "rewardserve_queue_duration_seconds",
            "Time an input waited in the batcher before its batch ran.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenize_duration = Histogram(
            "rewardserve_tokenize_duration_seconds",
            "Time to template and tokenize one request's inputs.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "rewardserve_inference_duration_seconds",
            "Device time of one batch's forward pass.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rewardserve_batch_size",
            "Sequences per executed batch.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "rewardserve_batch_tokens",
            "Real tokens per executed batch.",
            ["model"],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_padding_ratio = Histogram(
            "rewardserve_batch_padding_ratio",
            "Share of a batch's device cost spent on padding (0 when packed).",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.tokens_scored = Counter(
            "rewardserve_tokens_scored",
            "Tokens of inputs scored.",
            ["model"],
            registry=r,
        )
        self.inputs_scored = Counter(
            "rewardserve_inputs_scored",
            "Inputs scored.",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "rewardserve_rejected",
            "Requests refused, by reason (error type).",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "rewardserve_model_info",
            "Served models (value 1) and how they run.",
            ["model", "architecture", "dtype", "device", "head", "batch_strategy", "kernels"],
            registry=r,
        )
        self.reward = Histogram(
            "rewardserve_reward",
            "Distribution of rewards returned (no _sum: see rewardserve_reward_positive_sum_total).",
            ["model"],
            buckets=REWARD_BUCKETS,
            registry=r,
        )
        # The reward histogram has negative buckets, so prometheus_client leaves out its _sum (a
        # counter that can go down breaks rate()). The sum is kept as two monotonic counters instead:
        # mean reward = (positive - negative) / rewardserve_reward_count, over any window.
        self.reward_positive_sum = Counter(
            "rewardserve_reward_positive_sum",
            "Sum of the positive rewards returned.",
            ["model"],
            registry=r,
        )
        self.reward_negative_sum = Counter(
            "rewardserve_reward_negative_sum",
            "Sum of the magnitudes of the negative rewards returned.",
            ["model"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "rewardserve_generated_tokens",
            "Tokens sampled by the policy generator.",
            ["model"],
            registry=r,
        )
        self.generation_duration = Histogram(
            "rewardserve_generation_duration_seconds",
            "Time of one generate call, all samples.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Typed results (issue 15): every entry's results by status (ok | timeout | error |
        # parse_failed), so a verifier that starts timing out shows up instead of hiding as zeros.
        self.reward_results = Counter(
            "rewardserve_reward_results",
            "Inputs answered by a reward source, by entry and status (not ok = masked).",
            ["model", "status"],
            registry=r,
        )
        self.queue_probes: dict[str, Callable[[], tuple[int, int]]] = {}
        self.correlations: dict[str, RollingCorrelation] = {}
        r.register(_LiveState(self))

    def observe_rewards(self, model: str, rewards: Sequence[float], lengths: Sequence[float]) -> None:
        hist = self.reward.labels(model)
        # Both children exist from the first call, so the mean's three series start together.
        positive = self.reward_positive_sum.labels(model)
        negative = self.reward_negative_sum.labels(model)
        rc = self.correlations.setdefault(model, RollingCorrelation())
        for reward, length in zip(rewards, lengths, strict=True):
            if math.isfinite(reward):
                hist.observe(reward)
                if reward > 0:
                    positive.inc(reward)
                elif reward < 0:
                    negative.inc(-reward)
                rc.add(reward, length)

    def count_results(self, model: str, statuses: Iterable[str]) -> None:
        """Count one call's results of entry ``model`` by status."""
        counts: dict[str, int] = {}
        for status in statuses:
            counts[status] = counts.get(status, 0) + 1
        for status, n in counts.items():
            self.reward_results.labels(model, status).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
