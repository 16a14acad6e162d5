"""A composite `math + RM` against the RM alone, on the same inputs: does the verifier overlap?

Workload: N rows (default 512) of math answers (bench_functions.build_rows: correct, wrong and
unparseable answers) after a filler passage, so each response is ~200 tokens for the reward model.
One random-weight Llama reward model (bench size: 4 layers, hidden 256), the `math` built-in in W
worker processes (default 1), and the composite `{math: 1.0, rm: 0.1}`, all in one registry in this
process (no HTTP: this measures the composite, not a transport). One input per call (how OpenRLHF and
slime call), C calls in flight.

  rm         inputs / s of the reward model alone
  math       inputs / s of the verifier alone
  composite  inputs / s of math + rm (both scored for every input, concurrently)

Contract: composite >= 0.9 x rm (the verifier's worker processes run while the model's forward does).
Rows are measured in interleaved rounds (rm, math, composite, rm, ...) and the best round of each is
kept, so a neighbour's load on a shared machine hits all rows alike. Prints a table and writes JSON
(bench/results/bench_composite.json).

Usage: python bench/bench_composite.py [--inputs N] [--concurrency C] [--workers W]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def workload(n: int, seed: int) -> list[dict[str, Any]]:
    from bench_functions import build_rows

    rng = random.Random(seed)
    words = [
        "we",
        "first",
        "restate",
        "the",
        "problem",
        "then",
        "simplify",
        "each",
        "side",
        "carefully",
        "and",
        "check",
        "the",
        "units",
    ]
    rows = build_rows(n, seed)
    for r in rows:
        filler = " ".join(rng.choice(words) for _ in range(rng.randint(120, 220)))
        r["response"] = f"{filler}. {r['response']}"
    return rows


async def throughput(source: Any, inputs: list[Any], concurrency: int) -> float:
    from rewardserve.scoring.types import ScoreOptions

    queue = list(reversed(inputs))
    options = ScoreOptions(truncate=True)

    async def worker() -> None:
        while queue:
            await source.score([queue.pop()], options)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(inputs) / (time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from machine import machine_info
    from rewardserve.config import Settings
    from rewardserve.metrics import Metrics
    from rewardserve.registry import Registry
    from rewardserve.scoring.types import ScoreInput
    from rewardserve.testing.tiny_models import build_bench_reward_model

    with tempfile.TemporaryDirectory() as tmp:
        rm_dir = build_bench_reward_model(Path(tmp) / "rm")
        config = Path(tmp) / "rewards.yaml"
        config.write_text(
            f"models:\n  - {{name: rm, path: {rm_dir}, max_input_tokens: 512}}\n"
            f"functions:\n  - {{name: math, workers: {args.workers}}}\n"
            "composites:\n  - {name: composite, weights: {math: 1.0, rm: 0.1}}\n"
        )
        rows = workload(args.inputs, args.seed)
        inputs = [ScoreInput(prompt=r["prompt"], response=r["response"], label=r["label"]) for r in rows]
        registry = await Registry.from_settings(Settings(config=config, device="cpu"), metrics=Metrics())
        await registry.start()
        try:
            names = ["rm", "math", "composite"]
            best = dict.fromkeys(names, 0.0)
            for _ in range(args.rounds):
                for name in names:
                    t = await throughput(registry.get(name), inputs, args.concurrency)
                    best[name] = max(best[name], t)
        finally:
            await registry.close()
    return {
        "machine": machine_info(),
        "params": vars(args),
        "throughput_inputs_per_s": best,
        "composite_vs_rm": best["composite"] / best["rm"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    p.add_argument("--workers", type=int, default=1, help="math worker processes")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    result = asyncio.run(run(args))
    from machine import machine_line

    print(machine_line(result["machine"]))
    t = result["throughput_inputs_per_s"]
    print(f"\n{'row':<28}{'inputs/s':>10}")
    for name, label in (("rm", "RM alone"), ("math", "math alone"), ("composite", "composite math + RM")):
        print(f"{label:<28}{t[name]:>10.1f}")
    print(f"\ncomposite / RM alone = {result['composite_vs_rm']:.2f} (contract >= 0.9)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_composite.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'bench_composite.json'}")


if __name__ == "__main__":  # spawn-started workers import this module: keep the work behind the guard
    main()
