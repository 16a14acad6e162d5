"""Ensemble overhead on this machine: an ensemble of 3 reward models vs its members scored alone.

Workload: three random-weight Llama-architecture reward models (bench size: 4 layers, hidden 256;
seeds 0, 1, 2), N inputs with RLHF-like lognormal lengths (median ~200 tokens), one input per call
(how OpenRLHF calls), C calls in flight. Everything runs in one process through the registry that
the transports call (no HTTP: this measures the ensemble, not a transport), side by side in one run:

  (1..3) member i alone        T_i = inputs / s scored by member i alone on the N inputs
  (e)    ensemble of the three T_e = inputs / s, each input counted once (it is scored 3 times)
  target                       1 / sum(1 / T_i): the three members one after another, no overlap

Contract: T_e >= 0.9 x target (the ensemble adds no overhead of its own). Latency: one small request
(one ~64-token input) on the idle registry, median of K calls, ensemble vs the sum of its members
alone (members overlap where cores are free, so it should be below the sum).

Members and the ensemble are measured in interleaved rounds (1, 2, 3, e, 1, 2, ...) and the best round
of each is kept, so a neighbour's load on a shared machine hits all rows alike. Prints a table and
writes JSON (bench/results/bench_ensemble.json). Usage: python bench/bench_ensemble.py [--inputs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rewardserve.config import Settings
from rewardserve.registry import Registry
from rewardserve.scoring.types import ScoreInput, ScoreOptions
from rewardserve.sources.base import RewardSource

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MEMBERS = ("m0", "m1", "m2")


def build_models(root: Path) -> dict[str, Path]:
    from rewardserve.testing.tiny_models import build_bench_reward_model

    return {name: build_bench_reward_model(root / name, seed=i) for i, name in enumerate(MEMBERS)}


def workload(model_dir: Path, n: int, seed: int) -> tuple[list[str], int]:
    from transformers import AutoTokenizer

    from rewardserve.testing.tiny_models import lognormal_lengths, make_text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = lognormal_lengths(n, median=200, sigma=0.7, lo=16, hi=1024, seed=seed)
    rng = random.Random(seed)
    texts = [make_text(tok, length, rng) for length in lengths]
    return texts, sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


async def throughput(source: RewardSource, inputs: list[ScoreInput], concurrency: int) -> float:
    """Inputs per second, one input per call, ``concurrency`` calls in flight."""
    queue = list(reversed(inputs))
    options = ScoreOptions()

    async def worker() -> None:
        while queue:
            await source.score([queue.pop()], options)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(inputs) / (time.perf_counter() - t0)


async def latencies_ms(sources: list[RewardSource], inp: ScoreInput, calls: int) -> list[float]:
    """Median milliseconds of one single-input call on an idle registry, per source; the sources take
    turns call by call so that a neighbour's load hits every row alike."""
    options = ScoreOptions()
    times: list[list[float]] = [[] for _ in sources]
    for _ in range(calls):
        for row, source in zip(times, sources, strict=True):
            t0 = time.perf_counter()
            await source.score([inp], options)
            row.append(time.perf_counter() - t0)
    return [1000 * statistics.median(row) for row in times]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        dirs = build_models(Path(tmp))
        config = Path(tmp) / "models.yaml"
        config.write_text(
            "models:\n"
            + "".join(f"  - {{name: {n}, path: {p}}}\n" for n, p in dirs.items())
            + f"ensembles:\n  - {{name: ens, members: [{', '.join(MEMBERS)}]}}\n"
        )
        texts, tokens = workload(dirs["m0"], args.inputs, args.seed)
        inputs = [ScoreInput(text=t) for t in texts]
        small = ScoreInput(
            prompt="what is two plus two?", response="four, because two and two make four " * 4
        )
        settings = Settings(config=config, device="cpu", compute_workers=args.compute_workers)
        registry = await Registry.from_settings(settings)
        await registry.start()
        try:
            rows = [*MEMBERS, "ens"]
            best: dict[str, float] = dict.fromkeys(rows, 0.0)
            for _ in range(args.rounds):
                for name in rows:
                    best[name] = max(
                        best[name], await throughput(registry.get(name), inputs, args.concurrency)
                    )
            ms = await latencies_ms([registry.get(name) for name in rows], small, args.calls)
            lat = dict(zip(rows, ms, strict=True))
            card = registry.get("m0").card()
        finally:
            await registry.close()
    target = 1 / sum(1 / best[m] for m in MEMBERS)
    lat_sum = sum(lat[m] for m in MEMBERS)
    return {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "params": {
            **vars(args),
            "tokens": tokens,
            "batch_strategy": card["batch_strategy"],
            "kernels": card["kernels"],
        },
        "throughput_inputs_per_s": best,
        "target_inputs_per_s": target,
        "ensemble_vs_target": best["ens"] / target,
        "latency_ms": lat,
        "members_latency_sum_ms": lat_sum,
        "ensemble_vs_latency_sum": lat["ens"] / lat_sum,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=256, help="inputs in the throughput workload")
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each row is kept")
    p.add_argument("--calls", type=int, default=20, help="single-input calls per latency row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compute-workers", type=int, default=None, help="per model (default: the server's)")
    args = p.parse_args()
    result = asyncio.run(run(args))
    t, lat = result["throughput_inputs_per_s"], result["latency_ms"]
    tok_per_input = result["params"]["tokens"] / args.inputs
    print(f"\n{'row':<26}{'inputs/s':>10}{'tok/s':>10}{'1-input ms':>12}")
    for name in (*MEMBERS, "ens"):
        label = "ensemble of 3" if name == "ens" else f"member {name} alone"
        print(f"{label:<26}{t[name]:>10.1f}{t[name] * tok_per_input:>10.0f}{lat[name]:>12.1f}")
    print(
        f"{'1/sum(1/T_i), members sum':<26}{result['target_inputs_per_s']:>10.1f}{'':>10}"
        f"{result['members_latency_sum_ms']:>12.1f}"
    )
    print(f"\nensemble throughput / 1/sum(1/T_i) = {result['ensemble_vs_target']:.2f} (contract >= 0.9)")
    print(f"ensemble latency / sum of members = {result['ensemble_vs_latency_sum']:.2f} (contract < 1)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_ensemble.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'bench_ensemble.json'}")


if __name__ == "__main__":
    main()
