"""GPU scoring benchmark: the engine's packed path against the two naive ways, per model size.

Fits one call of the device tool (< 8 minutes on one H100). For Llama-shaped random-weight reward
models at 1B and 8B (bf16, vocab 128256) and 1,024 lengths drawn lognormal (median 450, clipped
32-4096) it measures:
  - the card's bf16 matmul rate (the ceiling: model FLOPs / this rate),
  - tokens/s and model-FLOP utilisation of (1) one sequence at a time, (2) padded batches of 16 in
    arrival order, (3) rewardserve's packed path under a token budget,
  - packed bf16 scores against an fp32 padded reference on a subset (max abs diff, rank agreement).
Prints a table and writes bench/results/bench_gpu.json.

    python bench/bench_gpu.py                 # the full run (CUDA)
    python bench/bench_gpu.py --smoke         # tiny shapes, runs anywhere (CPU), checks the script
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
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
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 256,
    },
}


def lengths(n: int, median: float, lo: int, hi: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(hi, max(lo, round(rng.lognormvariate(math.log(median), 0.8)))) for _ in range(n)]


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
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(
            cfg, dtype=dtype, attn_implementation=packing.register()
        )
    return model.eval()


class _Tok:
    pad_token_id = 0
    chat_template = None


def timed(device: torch.device, fn: Any) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def run_size(
    size: str, lens: list[int], args: argparse.Namespace, device: torch.device, peak: float
) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(size, args.vocab, device, dtype)
    rng = random.Random(1)
    seqs = [[rng.randrange(1, args.vocab) for _ in range(n)] for n in lens]
    items = [Encoded(s) for s in seqs]
    cfg = model.config
    fpt = flops_per_token(cfg, sum(lens) / len(lens))
    result: dict[str, Any] = {"size": size, "sequences": len(seqs), "tokens": sum(lens)}

    def engine(strategy: str) -> RewardEngine:
        return RewardEngine(
            model, _Tok(), name=size, device=device, max_input_tokens=max(lens), strategy=strategy
        )  # type: ignore[arg-type]

    packed = engine("packed")
    packed.warmup()
    # (3) packed under a token budget, in arrival order (what the batcher does).
    t, packed_out = timed(device, lambda: packed.score_encoded(items, args.budget, 4096))
    result["packed"] = {"tok_s": sum(lens) / t}
    # (1) one at a time and (2) padded batches of 16, on a prefix to keep the run short.
    sub = items[: args.naive_subset]
    sub_tokens = sum(e.n_tokens for e in sub)
    seq = engine("sequential")
    t, _ = timed(device, lambda: seq.score_encoded(sub, 10**9, 1))
    result["one_at_a_time"] = {"tok_s": sub_tokens / t}
    pad = engine("padded")
    t, _ = timed(device, lambda: [pad.run(pad.prepare(sub[i : i + 16])) for i in range(0, len(sub), 16)])
    result["padded_16"] = {"tok_s": sub_tokens / t}
    ceiling = peak * 1e12 / fpt
    result["ceiling_tok_s"] = ceiling
    for k in ("one_at_a_time", "padded_16", "packed"):
        result[k]["mfu"] = result[k]["tok_s"] * fpt / (peak * 1e12)
    # Accuracy: packed bf16 against an fp32 padded reference on a subset.
    check = items[: args.check_subset]
    got = [o.score for o in packed_out[: len(check)]]
    model.float()
    ref_engine = engine("padded")
    ref = [o.score for o in ref_engine.score_encoded(check, 10**9, 8)]
    diffs = [abs(a - b) for a, b in zip(got, ref, strict=True)]
    order_got = sorted(range(len(got)), key=got.__getitem__)
    order_ref = sorted(range(len(ref)), key=ref.__getitem__)
    result["check"] = {
        "n": len(check),
        "max_abs_diff": max(diffs),
        "ref_std": float(torch.tensor(ref).std()),
        "same_ranking_top_bottom": order_got[0] == order_ref[0] and order_got[-1] == order_ref[-1],
    }
    return result  # the model is freed when this frame goes; main() empties the CUDA cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device (script check)")
    ap.add_argument("--sizes", default="1B,8B")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--budget", type=int, default=65536, help="packed token budget per batch")
    ap.add_argument("--naive-subset", type=int, default=256)
    ap.add_argument("--check-subset", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128256)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.sizes.split(",")
    if args.smoke:
        sizes, args.n, args.vocab, args.naive_subset, args.check_subset = ["smoke"], 48, 1000, 16, 8
    lens = lengths(
        args.n,
        450 if not args.smoke else 40,
        32 if not args.smoke else 4,
        4096 if not args.smoke else 200,
        seed=0,
    )
    peak = matmul_tflops(
        device,
        torch.bfloat16 if device.type == "cuda" else torch.float32,
        8192 if device.type == "cuda" else 512,
    )
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, measured matmul {peak:.1f} TFLOP/s")
    results = []
    for s in sizes:
        results.append(run_size(s, lens, args, device, peak))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| model | one at a time | padded x16 | packed | ceiling | packed MFU | max |bf16-fp32| |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['size']} | {r['one_at_a_time']['tok_s']:.0f} | {r['padded_16']['tok_s']:.0f} | "
            f"{r['packed']['tok_s']:.0f} | {r['ceiling_tok_s']:.0f} | {r['packed']['mfu']:.1%} | "
            f"{r['check']['max_abs_diff']:.3g} (ref std {r['check']['ref_std']:.3g}) |"
        )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_gpu.json").write_text(
        json.dumps({"device": name, "matmul_tflops": peak, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
