"""Scoring throughput on this machine: rewardserve vs a naive per-request server vs the bare engine.

Workload: a random-weight Llama-architecture reward model (4 layers, hidden 256, head_dim 64),
N requests with RLHF-like lognormal lengths (median ~200 tokens, up to 1024), one input per request
over HTTP (how OpenRLHF calls `/get_reward`), C concurrent clients. Side by side in one run:

  (a) rewardserve            `rewardserve serve` in its own process
  (b) naive (serve_rm-like)  each request tokenized and forwarded on its own, as OpenRLHF's serve_rm does
  (c) engine direct          rewardserve's engine on the whole workload, no server (its own process)
  (d) rewardserve gRPC       the same requests as unary RewardService/Score calls, C concurrent clients
  (e) rewardserve gRPC stream  the same requests as messages of ONE ScoreStream (one input each), sent
                             as fast as the stream takes them; latency = message sent -> its answer
  (f) rewardserve, transformers kernels  (a) with `--no-fused-cpu`: the model's own transformers modules
                             instead of the fused CPU forward (what the fused forward buys)

The load generator is bench/loadgen.py (raw HTTP/1.1; `--client httpx` for httpx): it shares the
cores with the servers, so its own CPU cost is kept small and reported.

Each server runs in its own process so its peak resident memory (VmHWM) is its own. Prints a table and
writes JSON (bench/results/bench_scoring.json). Usage: python bench/bench_scoring.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from loadgen import CLIENTS, post_all, summarize
from machine import machine_info, machine_line

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_workload(model_dir: Path, n: int, seed: int) -> tuple[list[str], list[int]]:
    from transformers import AutoTokenizer

    from rewardserve.testing.tiny_models import lognormal_lengths, make_text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = lognormal_lengths(n, median=200, sigma=0.7, lo=16, hi=1024, seed=seed)
    rng = random.Random(seed)
    texts = [make_text(tok, length, rng) for length in lengths]
    tokens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return texts, tokens


async def _load(url: str, texts: list[str], concurrency: int, client: str = "raw") -> dict[str, Any]:
    """Send every text as its own /get_reward request with `concurrency` clients; time each."""
    payloads = [{"query": [t]} for t in texts]
    return await post_all(url, "/get_reward", payloads, concurrency, lambda r: r["rewards"][0], client)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    port = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited: {cmd}")
        if "HTTP on http://" in line:
            port = int(line.rsplit(":", 1)[1])
            break
    assert port is not None
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                # keep draining stdout so the server never blocks on a full pipe
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready")


def _serve_and_load(
    name: str, cmd: list[str], env: dict[str, str], texts: list[str], conc: int, client: str = "raw"
) -> dict[str, Any]:
    proc, url = _start(cmd, env)
    try:
        asyncio.run(_load(url, texts[: max(8, len(texts) // 16)], conc, client))  # warm-up, not timed
        cpu0 = _cpu_s(proc.pid)
        result = asyncio.run(_load(url, texts, conc, client))
        result["server_cpu_s"] = _cpu_s(proc.pid) - cpu0
        result["peak_rss_mb"] = _peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    result["name"] = name
    return result


def _start_with_grpc(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str, str]:
    """Start `rewardserve serve ... --grpc-port 0`; returns (process, HTTP url, gRPC target) once ready."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    ports: dict[str, int] = {}
    while len(ports) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited: {cmd}")
        for kind, marker in (("http", "HTTP on http://"), ("grpc", "gRPC on ")):
            if marker in line:
                ports[kind] = int(line.rsplit(":", 1)[1])
    url, target = f"http://127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # never block on a full pipe
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return proc, url, target
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready")


async def _load_grpc_unary(target: str, texts: list[str], concurrency: int) -> dict[str, Any]:
    """(d): every text as its own unary Score call, `concurrency` clients on one channel (HTTP/2)."""
    import grpc.aio

    from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
    from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc

    latencies: list[float] = []
    rewards = [0.0] * len(texts)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(texts)):
        queue.put_nowait(i)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RewardServiceStub(channel)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                reply = await stub.Score(pb.ScoreRequest(inputs=[pb.Input(text=texts[i])]), timeout=600)
                latencies.append(time.perf_counter() - t0)
                rewards[i] = reply.scores[0]

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return summarize(latencies, wall, rewards)


async def _load_grpc_stream(target: str, texts: list[str]) -> dict[str, Any]:
    """(e): one ScoreStream, one input per message, answers matched by id."""
    import grpc.aio

    from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
    from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc

    sent: dict[str, float] = {}
    latencies: list[float] = []
    rewards = [0.0] * len(texts)

    async def messages() -> Any:
        for i, text in enumerate(texts):
            sent[str(i)] = time.perf_counter()
            yield pb.ScoreStreamRequest(id=str(i), inputs=[pb.Input(text=text)])

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        t0 = time.perf_counter()
        async for answer in stub.ScoreStream(messages(), timeout=600):
            if answer.HasField("error"):
                raise RuntimeError(f"message {answer.id}: {answer.error.message}")
            latencies.append(time.perf_counter() - sent[answer.id])
            rewards[int(answer.id)] = answer.response.scores[0]
        wall = time.perf_counter() - t0
    return summarize(latencies, wall, rewards)


def _serve_and_load_grpc(
    name: str, cmd: list[str], env: dict[str, str], texts: list[str], conc: int, streaming: bool
) -> dict[str, Any]:
    proc, _, target = _start_with_grpc(cmd, env)

    def load(some: list[str]) -> dict[str, Any]:
        if streaming:
            return asyncio.run(_load_grpc_stream(target, some))
        return asyncio.run(_load_grpc_unary(target, some, conc))

    try:
        load(texts[: max(8, len(texts) // 16)])  # warm-up pass, not timed
        cpu0, client0 = _cpu_s(proc.pid), time.process_time()
        result = load(texts)
        result["server_cpu_s"] = _cpu_s(proc.pid) - cpu0
        result["client_cpu_s"] = time.process_time() - client0
        result["peak_rss_mb"] = _peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    result["name"] = name
    return result


def direct(model_dir: Path, texts_file: Path) -> None:
    """(c): the engine on the whole workload in this process; prints one JSON line."""
    from rewardserve.config import Settings
    from rewardserve.scoring.engine import RewardEngine
    from rewardserve.scoring.types import ScoreInput

    texts = json.loads(texts_file.read_text())
    settings = Settings(model=model_dir)
    engine = RewardEngine.load(model_dir, settings)
    engine.warmup()

    def score(some: list[str]) -> list[Any]:
        enc = [engine.encode(ScoreInput(text=t), truncate=True) for t in some]
        return engine.score_encoded(enc, settings.max_batch_tokens, settings.max_batch_rows)

    score(texts[: max(8, len(texts) // 16)])  # the same untimed warm-up pass the servers get
    cpu0, t0 = time.process_time(), time.perf_counter()
    outs = score(texts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(
        json.dumps(
            {
                "name": "engine direct",
                "wall_s": wall,
                "server_cpu_s": cpu,
                "rewards": [o.score for o in outs],
                "peak_rss_mb": _peak_rss_mb(os.getpid()),
                "strategy": engine.strategy,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--client", choices=CLIENTS, default="raw", help="HTTP load generator (see loadgen.py)")
    ap.add_argument("--direct", nargs=2, metavar=("MODEL_DIR", "TEXTS_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct:
        direct(Path(args.direct[0]), Path(args.direct[1]))
        return

    from rewardserve.testing.tiny_models import build_bench_reward_model

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_reward_model(Path(tmp) / "bench-llama")
        texts, tokens = build_workload(model_dir, args.requests, args.seed)
        total_tokens = sum(tokens)
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        rs_bin = str(Path(sys.executable).parent / "rewardserve")
        runs = [
            _serve_and_load(
                "(a) rewardserve",
                # gRPC on any free port: the default 50051 may be taken on a shared machine.
                [rs_bin, "serve", "--model", str(model_dir), "--port", "0", "--grpc-port", "0"],
                env,
                texts,
                args.concurrency,
                args.client,
            ),
            _serve_and_load(
                "(b) naive per-request",
                [sys.executable, str(HERE / "naive_server.py"), str(model_dir)],
                env,
                texts,
                args.concurrency,
                args.client,
            ),
        ]
        out = subprocess.run(
            [sys.executable, __file__, "--direct", str(model_dir), str(texts_file)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        grpc_cmd = [rs_bin, "serve", "--model", str(model_dir), "--port", "0", "--grpc-port", "0"]
        for name, streaming in (("(d) rewardserve gRPC", False), ("(e) rewardserve gRPC stream", True)):
            runs.append(_serve_and_load_grpc(name, grpc_cmd, env, texts, args.concurrency, streaming))
        runs.append(
            _serve_and_load(
                "(f) rewardserve, transformers kernels",
                [
                    rs_bin,
                    "serve",
                    "--model",
                    str(model_dir),
                    "--port",
                    "0",
                    "--grpc-port",
                    "0",
                    "--no-fused-cpu",
                ],
                env,
                texts,
                args.concurrency,
                args.client,
            )
        )

    ref = runs[2]["rewards"]
    rows = []
    for r in runs:
        diff = max(abs(a - b) for a, b in zip(r["rewards"], ref, strict=True))
        rows.append(
            {
                "name": r["name"],
                "tok_s": total_tokens / r["wall_s"],
                "req_s": len(texts) / r["wall_s"],
                "p50_ms": r.get("p50_ms"),
                "p99_ms": r.get("p99_ms"),
                "peak_rss_mb": r["peak_rss_mb"],
                "server_cpu_s": r.get("server_cpu_s"),
                "client_cpu_s": r.get("client_cpu_s"),
                "max_abs_reward_diff_vs_c": diff,
            }
        )
    a, b, c = rows[:3]
    summary = {
        "a_over_c": a["tok_s"] / c["tok_s"],
        "a_over_b": a["tok_s"] / b["tok_s"],
        "serving_rss_added_mb": a["peak_rss_mb"] - c["peak_rss_mb"],
        # gRPC unary and streaming throughput relative to HTTP, same workload (rows d, e over a).
        "d_over_a": rows[3]["tok_s"] / a["tok_s"],
        "e_over_a": rows[4]["tok_s"] / a["tok_s"],
        # What the fused CPU forward buys over the model's own transformers modules, same server.
        "a_over_f": a["tok_s"] / rows[5]["tok_s"],
    }
    report = {
        "machine": machine_info(),
        "workload": {
            "requests": len(texts),
            "concurrency": args.concurrency,
            "total_tokens": total_tokens,
            "median_tokens": statistics.median(tokens),
            "max_tokens": max(tokens),
        },
        "rows": rows,
        "summary": summary,
        "client": args.client,
        "command": "python bench/bench_scoring.py " + " ".join(sys.argv[1:]),
    }
    print(f"\n{machine_line(report['machine'])}")
    print(
        f"{len(texts)} requests, {total_tokens} tokens (median {statistics.median(tokens):.0f}, "
        f"max {max(tokens)}), {args.concurrency} concurrent clients, {os.cpu_count()} cores\n"
    )
    header = ("server", "tok/s", "req/s", "p50 ms", "p99 ms", "peak RSS MB", "server CPU s", "client CPU s")
    print("| {:37} | {:>8} | {:>7} | {:>8} | {:>8} | {:>11} | {:>12} | {:>12} |".format(*header))
    print("|" + "|".join("-" * (w + 2) for w in (37, 8, 7, 8, 8, 11, 12, 12)) + "|")

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        print(
            f"| {r['name']:37} | {r['tok_s']:8.0f} | {r['req_s']:7.1f} | {num(r['p50_ms'], '.0f'):>8} "
            f"| {num(r['p99_ms'], '.0f'):>8} | {r['peak_rss_mb']:11.0f} "
            f"| {num(r['server_cpu_s'], '.1f'):>12} | {num(r['client_cpu_s'], '.1f'):>12} |"
        )
    print(
        f"\na/c = {summary['a_over_c']:.2f}  a/b = {summary['a_over_b']:.2f}  "
        f"serving RSS added = {summary['serving_rss_added_mb']:.0f} MB  "
        f"gRPC/HTTP: unary d/a = {summary['d_over_a']:.2f}, stream e/a = {summary['e_over_a']:.2f}  "
        f"fused/transformers a/f = {summary['a_over_f']:.2f}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_scoring.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / 'bench_scoring.json'}")


if __name__ == "__main__":
    main()
