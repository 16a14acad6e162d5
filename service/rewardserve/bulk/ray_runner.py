"""Score shards on a Ray cluster: Ray Data ``map_batches`` over an actor pool of scorers.

The dataset is the list of pending shard numbers, one per batch; each actor loads the model once and
runs ``process_shard`` (the same code as the local engine) on the shards it is handed, writing their
part files itself. Only the driver records shards as done in the manifest, as their results stream
back, so exactly-once holds however the shards are spread. Inputs and OUTPUT must therefore be on
storage every node can read and write (on one machine, any local path).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewardserve.bulk.inputs import Shard
from rewardserve.bulk.job import Job, ShardResult, process_shard
from rewardserve.config import Settings
from rewardserve.errors import BulkError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    """An existing cluster ("auto", "ray://host:10001"); None starts a local one for this run."""
    actors: int = 2
    num_cpus: int | None = None
    """CPUs of the local cluster started when no address is given; None = every core."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


class _ShardScorer:
    """One Ray actor: loads the model once, then scores whole shards."""

    def __init__(self, job: Job, shards: dict[int, Shard], model_path: str, settings: Settings, name: str):
        from rewardserve.bulk.local import LocalScorer

        self.job = job
        self.shards = shards
        self.scorer = LocalScorer.load(Path(model_path), settings, model_name=name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[int]]:
        results = [process_shard(self.job, self.shards[int(i)], self.scorer) for i in batch["shard"]]
        return {
            "shard": [r.index for r in results],
            "rows": [r.rows for r in results],
            "errors": [r.errors for r in results],
            "tokens": [r.tokens for r in results],
        }


def _actor_count(opts: RayOptions, pending: int) -> int:
    """Actors the cluster can host at once: Ray would otherwise wait forever for resources it lacks."""
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    fit = opts.actors
    if opts.cpus_per_actor > 0:
        fit = min(fit, int(cpus // opts.cpus_per_actor))
    if opts.gpus_per_actor > 0:
        fit = min(fit, int(gpus // opts.gpus_per_actor))
    if fit < 1:
        raise BulkError(
            f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs; one actor needs "
            f"{opts.cpus_per_actor:g} CPUs and {opts.gpus_per_actor:g} GPUs. Lower --num-cpus-per-actor "
            "/ --num-gpus-per-actor."
        )
    if fit < opts.actors:
        log.warning("the cluster fits %d of the %d actors asked for; using %d", fit, opts.actors, fit)
    return max(1, min(fit, pending))


def run_on_ray(
    job: Job,
    shards: list[Shard],
    *,
    model_path: Path,
    settings: Settings,
    model_name: str,
    opts: RayOptions,
    on_done: Callable[[ShardResult], None],
    on_start: Callable[[], None] = lambda: None,
) -> None:
    """Score ``shards`` on Ray; ``on_done`` is called in this process as each one finishes."""
    import ray
    import ray.data
    import ray.exceptions

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if opts.address is not None:
            ray.init(address=opts.address, **kwargs)
        else:
            ray.init(num_cpus=opts.num_cpus or os.cpu_count() or 1, **kwargs)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours is on the terminal already
        ctx.print_on_execution_start = False
        actors = _actor_count(opts, len(shards))
        if opts.gpus_per_actor == 0 and settings.device == "auto":
            settings = settings.model_copy(update={"device": "cpu"})  # no GPU was reserved for it
        if settings.torch_threads is None:
            # Ray gives each actor its share of the cores; torch would otherwise start one thread per core.
            settings = settings.model_copy(update={"torch_threads": max(1, int(opts.cpus_per_actor))})
        ds = ray.data.from_items([{"shard": s.index} for s in shards], override_num_blocks=len(shards))
        scored = ds.map_batches(
            _ShardScorer,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={
                "job": job,
                "shards": {s.index: s for s in shards},
                "model_path": str(model_path),
                "settings": settings,
                "name": model_name,
            },
            num_cpus=opts.cpus_per_actor,
            num_gpus=opts.gpus_per_actor,
        )
        on_start()  # actors load the model as results start to flow; Ray gives no earlier signal
        try:
            for row in scored.iter_rows():
                on_done(
                    ShardResult(int(row["shard"]), int(row["rows"]), int(row["errors"]), int(row["tokens"]))
                )
        except ray.exceptions.RayError as exc:
            # An actor failed (model not readable on a node, out of memory, ...): Ray's message carries
            # the remote traceback, which is what the user needs; ours adds that nothing is lost.
            raise BulkError(
                f"the Ray job failed; finished shards are kept, rerun the same command to resume.\n{exc}",
                exit_code=1,
            ) from exc
    finally:
        if started:
            ray.shutdown()
