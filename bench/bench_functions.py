"""Reward-function throughput: the `math` built-in (math-verify in worker processes) over a log.

Workload: N rows (default 10,000) of (response, label), fixed seed: ~50% correct answers written in
another form than the label (\\boxed{\\frac{2}{4}} vs 0.5, a bare last number), ~35% wrong answers,
~15% responses without an answer. All rows go to one FunctionSource in one score() call (so every
worker stays busy); rows/s counts from the moment the workers have loaded math-verify. Run once per
worker count. Prints a table and writes JSON (bench/results/bench_functions.json).

Usage: python bench/bench_functions.py [--rows N] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def build_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """(prompt, response, label, kind) rows; kind is what the row was built to be."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        num, den = rng.randint(1, 40), rng.choice([2, 4, 5, 8, 10])
        value = Fraction(num, den)
        label = str(value) if rng.random() < 0.5 else f"{float(value):g}"
        roll = rng.random()
        k = rng.randint(2, 5)
        if roll < 0.5:
            kind = "correct"
            form = rng.choice(
                [
                    f"\\boxed{{\\frac{{{value.numerator * k}}}{{{value.denominator * k}}}}}",
                    f"\\boxed{{{float(value):g}}}",
                    f"so the result is {float(value):g}",
                    f"$\\frac{{{value.numerator}}}{{{value.denominator}}}$",
                ]
            )
        elif roll < 0.85:
            kind = "incorrect"
            wrong = value + Fraction(rng.randint(1, 9), den)
            form = rng.choice([f"\\boxed{{{wrong}}}", f"the answer is {float(wrong):g}"])
        else:
            kind = "unparseable"
            form = rng.choice(["I cannot solve this.", "Let me think about it more.", "No idea, sorry!"])
        response = f"We compute step by step: {rng.randint(2, 99)} and {rng.randint(2, 99)}. {form}"
        rows.append({"id": i, "prompt": f"problem {i}", "response": response, "label": label, "kind": kind})
    return rows


async def run(rows: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    from rewardserve.functions.source import FunctionConfig, FunctionSource
    from rewardserve.scoring.types import ScoreInput, ScoreOptions

    source = FunctionSource(FunctionConfig(name="math", workers=workers, timeout_s=10))
    t0 = time.perf_counter()
    await source.start()
    started = time.perf_counter() - t0
    inputs = [ScoreInput(prompt=r["prompt"], response=r["response"], label=r["label"]) for r in rows]
    try:
        t1 = time.perf_counter()
        results = await source.score(inputs, ScoreOptions())
        elapsed = time.perf_counter() - t1
    finally:
        await source.close()
    statuses = Counter(r.status for r in results)
    agree = sum(
        1
        for row, r in zip(rows, results, strict=True)
        if r.status == "ok" and (r.score == 1.0) == (row["kind"] == "correct")
    )
    return {
        "workers": workers,
        "rows": len(rows),
        "seconds": round(elapsed, 3),
        "rows_per_s": round(len(rows) / elapsed, 1),
        "start_s": round(started, 2),
        "statuses": dict(statuses),
        "agree_with_construction": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_functions.json")
    args = parser.parse_args()
    rows = build_rows(args.rows)
    kinds = Counter(r["kind"] for r in rows)
    runs = [asyncio.run(run(rows, w)) for w in args.workers]
    base = runs[0]["rows_per_s"]
    print(
        f"math built-in over {args.rows} rows ({dict(kinds)}), {os.cpu_count()} CPUs, {platform.processor()}"
    )
    print(f"{'workers':>7} {'rows/s':>9} {'speed-up':>8} {'seconds':>8} {'start s':>8}  statuses / agree")
    for r in runs:
        print(
            f"{r['workers']:>7} {r['rows_per_s']:>9.1f} {r['rows_per_s'] / base:>7.2f}x {r['seconds']:>8.2f} "
            f"{r['start_s']:>8.2f}  {r['statuses']} / {r['agree_with_construction']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "rows": args.rows,
        "kinds": dict(kinds),
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":  # spawn-started workers import this module: keep the work behind the guard
    main()
