"""Bulk scoring throughput on this machine: `score-logs` with the local, server and Ray engines.

Workload: the benchmark reward model (random-weight Llama, 4 layers, hidden 256, ~5M parameters) and
a Parquet log of N prompt/response rows (prompt ~16 tokens, response log-normal, median 48 tokens).
Each engine runs in a fresh process, one run each, on the same log:

  direct  the engine alone on the same rows (RewardEngine.encode + score_encoded on the whole log, no
          shards, no files): the ceiling the local engine is measured against (issue 14: >= 0.9x)
  local   in-process engine (torch threads = --threads)
  server  `rewardserve serve` in its own process (REWARDSERVE_TORCH_THREADS = --threads), client with
          --concurrency requests of --batch-size rows in flight
  ray     a local Ray cluster of --ray-cpus CPUs, --ray-actors actors of 1 CPU each (1 torch thread)

"scoring rows/s" counts from the moment the model is loaded (and, for ray, the job submitted);
"wall s" is the whole command, start-up included. Prints a table and writes JSON
(bench/results/bench_bulk.json). Usage: python bench/bench_bulk.py [--rows N] [--engines direct,local]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from machine import machine_info, machine_line  # noqa: E402


def build_log(model_dir: Path, path: Path, n: int, seed: int) -> int:
    """Write the log; returns its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from rewardserve.testing.tiny_models import lognormal_lengths, make_text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rng = random.Random(seed)
    lengths = lognormal_lengths(n, median=48, sigma=0.6, lo=4, hi=256, seed=seed)
    rows = [
        {"id": i, "prompt": make_text(tok, rng.randint(8, 24), rng), "response": make_text(tok, length, rng)}
        for i, length in enumerate(lengths)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows)


def direct(log: Path, out: Path, model: Path, extra: dict[str, Any]) -> None:
    """The engine alone on every row of the log, timed from the model being loaded (as score-logs'
    "scoring s" is), tokenizing included; writes the rewards for the comparison column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rewardserve.config import Settings
    from rewardserve.scoring.engine import RewardEngine
    from rewardserve.scoring.types import ScoreInput

    t_start = time.perf_counter()
    rows = pq.read_table(log).to_pylist()
    settings = Settings(model=model, torch_threads=extra["threads"])
    engine = RewardEngine.load(model, settings)
    t0 = time.perf_counter()
    encoded = [
        engine.encode(ScoreInput(prompt=r["prompt"], response=r["response"]), truncate=False) for r in rows
    ]
    budget = max(settings.max_batch_tokens, engine.batch_cost([engine.max_input_tokens]))
    outs = engine.score_encoded(encoded, budget, settings.max_batch_rows)
    scoring_s = time.perf_counter() - t0
    pq.write_table(pa.table({"reward": [o.score for o in outs]}), out)
    tokens = sum(o.tokens for o in outs)
    result = {
        "rows_out": len(outs),
        "tokens": tokens,
        "scoring_s": scoring_s,
        "rows_per_s": len(outs) / scoring_s,
        "tokens_per_s": tokens / scoring_s,
        "process_wall_s": time.perf_counter() - t_start,
    }
    print(json.dumps(result))


def one(engine: str, log: Path, out: Path, model: Path, extra: dict[str, Any]) -> None:
    """Run one engine in this process; print its Summary as one JSON line."""
    if engine == "direct":
        direct(log, out, model, extra)
        return
    from rewardserve.bulk.ray_runner import RayOptions
    from rewardserve.bulk.runner import BulkOptions, score_logs
    from rewardserve.config import Settings

    t0 = time.perf_counter()
    settings = Settings(model=model, torch_threads=extra["threads"])
    opts = BulkOptions(
        inputs=(str(log),),
        output=out,
        engine=engine,  # type: ignore[arg-type]
        settings=settings,
        url=extra.get("url"),
        concurrency=extra["concurrency"],
        batch_size=extra["batch_size"],
        shard_rows=extra["shard_rows"],
        ray=RayOptions(actors=extra["ray_actors"], num_cpus=extra["ray_cpus"]),
        progress=False,
        overwrite=True,
    )
    summary = score_logs(opts)
    result = dataclasses.asdict(summary)
    result["process_wall_s"] = time.perf_counter() - t0
    print(json.dumps(result))


def _run_one(
    engine: str, log: Path, out: Path, model: Path, extra: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, __file__, "--one", engine, str(log), str(out), str(model), json.dumps(extra)],
        env=env,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{p.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0  # the whole command, interpreter start included
    return result


def _rewards(path: Path) -> list[float]:
    import pyarrow.parquet as pq

    return [float(x) for x in pq.read_table(path, columns=["reward"]).column(0).to_pylist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--shard-rows", type=int, default=500)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads for the local engine and the server"
    )
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ray-actors", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--engines",
        default="direct,local,server,ray",
        help="comma-separated subset of direct,local,server,ray",
    )
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        engine, log, out, model, extra = args.one
        one(engine, Path(log), Path(out), Path(model), json.loads(extra))
        return

    from bench_scoring import _start
    from rewardserve.testing.tiny_models import build_bench_reward_model

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    extra = {
        "threads": args.threads,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "shard_rows": args.shard_rows,
        "ray_actors": args.ray_actors,
        "ray_cpus": args.ray_cpus,
    }
    load_before = os.getloadavg()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_reward_model(Path(tmp) / "bench-llama")
        log = Path(tmp) / "log.parquet"
        rows = build_log(model_dir, log, args.rows, args.seed)
        engines = [e for e in ("direct", "local", "server", "ray") if e in args.engines.split(",")]
        if "local" not in engines:
            engines.insert(0, "local")  # the reference column
        outs = {e: Path(tmp) / f"{e}.parquet" for e in engines}
        for engine in engines:
            if engine != "server":
                runs[engine] = _run_one(engine, log, outs[engine], model_dir, extra, env)
                continue
            server_env = dict(env, REWARDSERVE_TORCH_THREADS=str(args.threads))
            rs_bin = str(Path(sys.executable).parent / "rewardserve")
            proc, url = _start([rs_bin, "serve", "--model", str(model_dir), "--port", "0"], server_env)
            try:
                runs["server"] = _run_one(
                    "server", log, outs["server"], model_dir, {**extra, "url": url}, env
                )
            finally:
                proc.terminate()
                proc.wait(60)
        ref = _rewards(outs["local"])
        for engine, r in runs.items():
            got = _rewards(outs[engine])
            r["max_abs_reward_diff_vs_local"] = max(abs(a - b) for a, b in zip(got, ref, strict=True))

    table = [
        {
            "engine": engine,
            "rows": r["rows_out"],
            "wall_s": r["wall_s"],
            "scoring_s": r["scoring_s"],
            "rows_per_s": r["rows_per_s"],
            "tokens_per_s": r["tokens_per_s"],
            "max_abs_reward_diff_vs_local": r["max_abs_reward_diff_vs_local"],
        }
        for engine, r in runs.items()
    ]
    tokens = runs["local"]["tokens"]
    report = {
        "machine": {
            **machine_info(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
        },
        "workload": {"rows": rows, "tokens": tokens, "mean_tokens": tokens / rows, **extra},
        "rows": table,
        "local_vs_direct": runs["local"]["tokens_per_s"] / runs["direct"]["tokens_per_s"]
        if "direct" in runs
        else None,
        "command": "python bench/bench_bulk.py " + " ".join(sys.argv[1:]),
    }
    print(f"\n{machine_line(report['machine'])}")
    print(
        f"{rows} rows, {tokens} tokens (mean {tokens / rows:.0f}/row), shards of {args.shard_rows}, "
        f"{os.cpu_count()} cores, torch threads {args.threads}, load average {load_before[0]:.1f}\n"
    )
    header = ("engine", "wall s", "scoring s", "rows/s", "tokens/s", "max |Δ| vs local")
    print("| {:8} | {:>7} | {:>9} | {:>7} | {:>9} | {:>16} |".format(*header))
    print(f"|{'-' * 10}|{'-' * 9}|{'-' * 11}|{'-' * 9}|{'-' * 11}|{'-' * 18}|")
    for r in table:
        print(
            f"| {r['engine']:8} | {r['wall_s']:7.1f} | {r['scoring_s']:9.1f} | {r['rows_per_s']:7.0f} | "
            f"{r['tokens_per_s']:9.0f} | {r['max_abs_reward_diff_vs_local']:16.1e} |"
        )
    if report["local_vs_direct"] is not None:
        print(f"\nlocal / engine direct tokens/s: {report['local_vs_direct']:.2f} (issue 14 asks >= 0.9)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_bulk.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS / 'bench_bulk.json'}")


if __name__ == "__main__":
    main()
