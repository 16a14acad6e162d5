"""GPU scoring benchmark: rewardserve's scoring paths side by side, per model size, with a correctness gate.

For Llama-shaped random-weight reward models (1B and 8B, bf16, vocab 128256, weights built on the GPU
directly) and 1,024 lengths drawn lognormal (mean ~640 tokens, clipped 32-4096) it prints the versions,
``inspect.signature(varlen_attn)`` and the card's measured bf16 matmul rate, then one row per way to
score (tokens/s and model-FLOP utilisation against that measured rate):

  one_at_a_time   one sequence per forward                         (first --subset inputs)
  padded_16       padded batches of 16 in arrival order            (first --subset inputs)
  sorted_budget   padded batches of length-sorted inputs under the token budget
  packed          rewardserve's packed path under the token budget (the batcher's shape)
  packed_compile  the same with torch.compile(dynamic=True) on the decoder
  server          the real HTTP server (FastAPI + batcher + packed engine), --clients concurrent
                  clients, one input per request; needs fastapi/uvicorn/pydantic (bench/download_wheels.sh)

Every engine row warms up on two full packs before its clock starts. The gate: each row's rewards for
the first --check-n inputs against an fp32 reference (padded, TF32 off), all pairs: the fraction of
pairs ordered the same must be >= --min-agreement, else the exit code is 1 (2 when a row crashed).

    python bench/bench_gpu.py --out $OUT/bench_gpu.json           # the full run (CUDA)
    python bench/bench_gpu.py --smoke                             # tiny model on the CPU, seconds

The server row tokenizes with a stand-in tokenizer (text = the token ids, space-separated), so every
row scores exactly the same token sequences and its rewards go through the same gate.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import inspect
import json
import math
import platform
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForSequenceClassification, LlamaConfig

from rewardserve.scoring import packing
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.types import Encoded

SIZES: dict[str, dict[str, int]] = {
    "1B": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
    },
    "8B": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
    },
    "smoke": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
}
# Run order: compile last, since its compile time is the one long unknown (--rows-time-limit).
ROWS = ("packed", "sorted_budget", "padded_16", "one_at_a_time", "server", "packed_compile")


def lengths(n: int, mean: float, lo: int, hi: int, seed: int, sigma: float = 0.8) -> list[int]:
    """Lognormal lengths with the given mean (before clipping): median = mean / exp(sigma^2 / 2)."""
    rng = random.Random(seed)
    mu = math.log(mean) - sigma**2 / 2
    return [min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def flops_per_token(cfg: LlamaConfig, mean_len: float) -> float:
    """Forward FLOPs per token: 2 x non-embedding params + causal attention scores/values."""
    h, layers, inter = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    params = layers * (h * h * 2 + h * kv * 2 + 3 * h * inter)
    attn = layers * 2 * h * mean_len  # QK^T and AV, half the square for causal
    return 2 * params + attn


def build(size: str, vocab: int, device: torch.device, dtype: torch.dtype) -> Any:
    cfg = LlamaConfig(
        vocab_size=vocab, num_labels=1, pad_token_id=0, max_position_embeddings=8192, **SIZES[size]
    )
    torch.manual_seed(0)
    with torch.device(device):  # random weights made where they live: no 16 GB host copy at 8B
        model = AutoModelForSequenceClassification.from_config(
            cfg, dtype=dtype, attn_implementation=packing.register()
        )
    return model.eval()


class IdsTokenizer:
    """Stand-in tokenizer: the text is the token ids, space-separated (see the module docstring)."""

    pad_token_id = 0
    chat_template = None
    truncation_side = "left"

    def __call__(self, text: str, *args: Any, **kwargs: Any) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}


def versions() -> dict[str, Any]:
    try:
        from torch.nn.attention.varlen import varlen_attn

        sig = str(inspect.signature(varlen_attn))
    except ImportError as exc:
        sig = f"absent ({exc})"
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "varlen_attn": sig,
    }


def pair_agreement(got: list[float], ref: list[float]) -> float:
    """Fraction of all pairs (i < j) that ``got`` orders as ``ref`` does."""
    n = len(ref)
    same = total = 0
    for i in range(n):
        for j in range(i + 1, n):
            total += 1
            same += (got[i] - got[j]) * (ref[i] - ref[j]) > 0
    return same / total if total else 1.0


class Bench:
    """One model size: its inputs, engines and rows."""

    def __init__(self, size: str, lens: list[int], args: argparse.Namespace, device: torch.device) -> None:
        self.size, self.args, self.device = size, args, device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        t0 = time.perf_counter()
        self.model = build(size, args.vocab, device, self.dtype)
        sync(device)
        self.build_s = time.perf_counter() - t0
        rng = random.Random(1)
        self.items = [Encoded([rng.randrange(1, args.vocab) for _ in range(n)]) for n in lens]
        self.max_len = max(lens)
        self.fpt = flops_per_token(self.model.config, sum(lens) / len(lens))
        self.scores: dict[str, list[float]] = {}

    def engine(self, strategy: str, tokenizer: Any = None) -> RewardEngine:
        return RewardEngine(
            self.model,
            tokenizer or IdsTokenizer(),
            name=self.size,
            device=self.device,
            max_input_tokens=self.max_len,
            strategy=strategy,  # type: ignore[arg-type]
        )

    def warm(self, engine: RewardEngine, full: bool = False) -> None:
        """Before a row's clock starts. ``full``: two full packs (by the token budget), done for the
        first packed engine (kernels, allocator, for every row: same model, same process) and for
        the compiled one; other rows run one batch of their own shape."""
        if not full:
            first = self.items[:16] if engine.strategy == "padded" else self.items[:1]
            engine.run(engine.prepare(first))
            sync(self.device)
            return
        pack: list[Encoded] = []
        for e in self.items:
            if sum(x.n_tokens for x in pack) + e.n_tokens > self.args.budget:
                break
            pack.append(e)
        for _ in range(2):
            engine.score_encoded(pack, self.args.budget, 4096)
        sync(self.device)

    def timed(self, name: str, items: list[Encoded], fn: Callable[[], list[float]]) -> dict[str, Any]:
        sync(self.device)
        t0 = time.perf_counter()
        scores = fn()
        sync(self.device)
        seconds = time.perf_counter() - t0
        self.scores[name] = scores
        tokens = sum(e.n_tokens for e in items)
        return {"inputs": len(items), "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}

    def row(self, name: str) -> dict[str, Any]:
        a, sub = self.args, self.items[: self.args.subset]
        if name == "one_at_a_time":
            eng = self.engine("sequential")
            self.warm(eng)
            return self.timed(name, sub, lambda: [o.score for o in eng.score_encoded(sub, 10**9, 1)])
        if name == "padded_16":
            eng = self.engine("padded")
            self.warm(eng)
            chunks = [sub[i : i + 16] for i in range(0, len(sub), 16)]
            return self.timed(name, sub, lambda: [o.score for c in chunks for o in eng.run(eng.prepare(c))])
        if name == "sorted_budget":
            eng = self.engine("padded")
            self.warm(eng)
            order = sorted(range(len(self.items)), key=lambda i: self.items[i].n_tokens)

            def sorted_scores() -> list[float]:
                outs = eng.score_encoded([self.items[i] for i in order], a.budget, 4096)
                back = [0.0] * len(order)
                for i, o in zip(order, outs, strict=True):
                    back[i] = o.score
                return back

            return self.timed(name, self.items, sorted_scores)
        if name in ("packed", "packed_compile"):
            eng = self.engine("packed")
            if name == "packed_compile":
                eng._base = torch.compile(eng._base, dynamic=True, backend=a.compile_backend)
            t0 = time.perf_counter()
            self.warm(eng, full=True)
            warm_s = time.perf_counter() - t0
            out = self.timed(
                name, self.items, lambda: [o.score for o in eng.score_encoded(self.items, a.budget, 4096)]
            )
            return {**out, "warmup_s": warm_s}
        if name == "server":
            return self.server_row()
        raise ValueError(f"unknown row {name!r}; rows are {ROWS}")

    def server_row(self) -> dict[str, Any]:
        """The real HTTP server over the packed engine, --clients clients, one input per request."""
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from loadgen import post_all
            from rewardserve.app import RewardServer
            from rewardserve.config import Settings
            from rewardserve.metrics import Metrics
            from rewardserve.scoring.service import ScoringService
        except ImportError as exc:
            return {"skipped": f"{exc}: carry the wheels (bench/download_wheels.sh, bench/device_check.sh)"}
        a = self.args
        settings = Settings(
            device=self.device.type,
            batch_strategy="packed",
            max_batch_tokens=a.budget,
            port=0,
            grpc_port=0,
            max_queued_requests=max(4096, 2 * len(self.items)),
            max_queued_tokens=10**9,
            max_input_tokens=self.max_len,
        )
        eng = self.engine("packed")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="bench-server", daemon=True)
        thread.start()

        async def boot() -> Any:
            metrics = Metrics()
            service = ScoringService(eng, settings, metrics=metrics)
            await service.start()
            server = RewardServer(settings, metrics=metrics, scoring=service)
            await server.start()
            return server

        server = asyncio.run_coroutine_threadsafe(boot(), loop).result(120)
        payloads = [{"inputs": [{"text": " ".join(map(str, e.input_ids))}]} for e in self.items]
        url = f"http://127.0.0.1:{server.http_port}"
        try:
            # Warm the whole stack (connections, batcher, tokenizer thread) before timing.
            asyncio.run(
                post_all(url, "/v1/score", payloads[: a.clients], a.clients, lambda r: r["scores"][0])
            )
            t0 = time.perf_counter()
            res = asyncio.run(post_all(url, "/v1/score", payloads, a.clients, lambda r: r["scores"][0]))
            seconds = time.perf_counter() - t0
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(120)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
        self.scores["server"] = res["rewards"]
        tokens = sum(e.n_tokens for e in self.items)
        return {
            "inputs": len(self.items),
            "tokens": tokens,
            "seconds": seconds,
            "tok_s": tokens / seconds,
            "clients": a.clients,
            "p50_ms": res["p50_ms"],
            "p99_ms": res["p99_ms"],
        }

    def reference(self) -> dict[str, Any]:
        """fp32 rewards for the first --check-n inputs, from an fp32 copy of the same (bf16) weights
        (padded, length-sorted, TF32 off), made before any row so that every row is checked the
        moment it ends: a run cut short by its time limit still has each finished row's verdict."""
        check = self.items[: self.args.check_n]
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        t0 = time.perf_counter()
        bf16_model, self.model = self.model, copy.deepcopy(self.model).float()
        try:
            ref_engine = self.engine("padded")
            order = sorted(range(len(check)), key=lambda i: check[i].n_tokens)
            self.ref = [0.0] * len(check)
            for s in range(0, len(order), 8):
                idx = order[s : s + 8]
                outs = ref_engine.run(ref_engine.prepare([check[i] for i in idx]))
                for i, o in zip(idx, outs, strict=True):
                    self.ref[i] = o.score
        finally:
            self.model = bf16_model  # the fp32 copy goes with ref_engine
        sync(self.device)
        ref_std = float(torch.tensor(self.ref).std())
        pairs = len(check) * (len(check) - 1) // 2
        return {"n": len(check), "pairs": pairs, "ref_std": ref_std, "seconds": time.perf_counter() - t0}

    def check(self, name: str) -> dict[str, float]:
        """One row's rewards against the fp32 reference: all-pairs order agreement, largest gap."""
        got = self.scores[name][: len(self.ref)]
        return {
            "pair_agreement": pair_agreement(got, self.ref),
            "max_abs_diff": max(abs(x - y) for x, y in zip(got, self.ref, strict=True)),
        }


def run_size(
    size: str,
    lens: list[int],
    args: argparse.Namespace,
    device: torch.device,
    peak: float,
    save: Callable[[], None],
) -> dict[str, Any]:
    """Every row for one size; ``result`` fills in (and ``save`` writes it) as each row ends."""
    b = Bench(size, lens, args, device)
    result: dict[str, Any] = {"size": size, "inputs": len(lens), "tokens": sum(lens), "build_s": b.build_s}
    result["ceiling_tok_s"] = peak * 1e12 / b.fpt
    args.results.append(result)
    print(f"\n== {size}: built in {b.build_s:.1f} s; {len(lens)} inputs, {sum(lens)} tokens", flush=True)
    result["reference"] = b.reference()
    print(f"   fp32 reference: {json.dumps(result['reference'])}", flush=True)
    save()
    started = time.perf_counter()
    for name in args.rows.split(","):
        if time.perf_counter() - started > args.rows_time_limit:
            result[name] = {"skipped": f"--rows-time-limit {args.rows_time_limit:.0f} s reached"}
            print(f"   {name}: {json.dumps(result[name])}", flush=True)
            continue
        try:
            r = b.row(name)
            if "tok_s" in r:
                r["mfu"] = r["tok_s"] * b.fpt / (peak * 1e12)
                r["check"] = b.check(name)
        except Exception as exc:  # one broken row must not hide the others' numbers
            traceback.print_exc()
            r = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        result[name] = r
        print(f"   {name}: {json.dumps(r)}", flush=True)
        save()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def verdict(results: list[dict[str, Any]], min_agreement: float) -> tuple[str, list[str], list[str]]:
    failed, crashed = [], []
    for r in results:
        for name in ROWS:
            row = r.get(name, {})
            if "error" in row:
                crashed.append(f"{r['size']}/{name}")
            if "check" in row and row["check"]["pair_agreement"] < min_agreement:
                failed.append(f"{r['size']}/{name}: {row['check']['pair_agreement']:.4f}")
    return ("FAIL" if failed else ("CRASHED ROWS" if crashed else "PASS")), failed, crashed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the whole flow with a tiny model on the CPU")
    ap.add_argument("--sizes", default="1B,8B")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {ROWS}")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--budget", type=int, default=65536, help="token budget per batch")
    ap.add_argument(
        "--subset", type=int, default=256, help="inputs for the slow rows (one at a time, padded x16)"
    )
    ap.add_argument("--check-n", type=int, default=128, help="inputs in the fp32 check (all their pairs)")
    ap.add_argument("--min-agreement", type=float, default=0.99)
    ap.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients in the server row")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument(
        "--rows-time-limit",
        type=float,
        default=1e9,
        help="seconds per size (after its fp32 reference) after which the remaining rows are skipped",
    )
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_gpu.json"
    )
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    sizes = args.sizes.split(",")
    mean, lo, hi = 640, 32, 4096
    if args.smoke or not cuda:
        if not args.smoke:
            print("no CUDA device: running --smoke instead", flush=True)
        sizes, args.n, args.vocab, args.subset, args.check_n, args.budget = ["smoke"], 48, 1000, 16, 24, 2048
        args.clients, args.compile_backend, mean, lo, hi = 8, "eager", 40, 4, 200
        args.smoke = True
    args.check_n = min(args.check_n, args.subset)  # every row scores at least the first --subset inputs
    info = versions()
    for k, v in info.items():
        print(f"{k}: {v}", flush=True)
    lens = lengths(args.n, mean, lo, hi, seed=0)
    print(f"inputs: {len(lens)}, mean length {sum(lens) / len(lens):.0f}, max {max(lens)}", flush=True)
    peak = matmul_tflops(device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 256)
    print(f"measured matmul: {peak:.1f} TFLOP/s ({'bf16' if cuda else 'fp32'})", flush=True)
    args.results = []
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        v = verdict(args.results, args.min_agreement)[0]
        doc = {**info, "matmul_tflops": peak, "smoke": args.smoke, "verdict": v, "results": args.results}
        args.out.write_text(json.dumps(doc, indent=2))

    for size in sizes:
        run_size(size, lens, args, device, peak, save)
    print(f"\n| model | row | tok/s | MFU | pair agreement vs fp32 ({args.check_n} inputs) | max diff |")
    print("|---|---|---|---|---|---|")
    for r in args.results:
        for name in args.rows.split(","):
            row = r[name]
            chk = row.get("check")
            tok_s = f"{row['tok_s']:.0f}" if "tok_s" in row else row.get("skipped", row.get("error", ""))[:60]
            mfu = f"{row['mfu']:.1%}" if "mfu" in row else ""
            agree = f"{chk['pair_agreement']:.4f}" if chk else ""
            diff = f"{chk['max_abs_diff']:.3g}" if chk else ""
            print(f"| {r['size']} | {name} | {tok_s} | {mfu} | {agree} | {diff} |")
    v, failed, crashed = verdict(args.results, args.min_agreement)
    print(f"\norder check (>= {args.min_agreement}): {v} {failed or ''} {crashed or ''}", flush=True)
    save()
    print(f"wrote {args.out}")
    return 1 if failed else (2 if crashed else 0)


if __name__ == "__main__":
    sys.exit(main())
