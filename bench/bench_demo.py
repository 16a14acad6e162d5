"""Pairwise accuracy of the demo reward model on three frozen pair sets nobody tuned on.

``bench/demo_sets/fresh_{a,b,c}.jsonl`` (150 pairs each, 25 per behaviour) and ``fresh_d.jsonl``
(180, 30 per behaviour) were written on 2026-11-30 by four separate authors who had seen neither
the demo's training data nor any other test set, after the demo recipe (BUILD_VERSION 3) was fixed.
fresh_a, then fresh_a-c, served to try recipe variants that were all dropped (none beat the shipped
recipe on them); fresh_d was only ever scored, so it is the one unbiased figure. They stay
outside the package, so the build neither trains on them nor prints them: they estimate how the
demo does on pairs written by someone else, which the build's own held-out sets (tuned against) no
longer can.

    python bench/bench_demo.py [MODEL_DIR] [--out demo.json]

Without MODEL_DIR it builds (or reuses) the demo in the cache, as ``rewardserve serve`` does. The
table gives each set overall and per behaviour; ``overlap`` counts pairs sharing a text (normalised
prompt or response) with the pairs the build trains on: a common question such as "how do I make a
cup of tea" can appear in both by coincidence.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from machine import machine_info, machine_line
from rewardserve.demo.data import PreferencePair, load_bank, load_heldout, load_pairs, normalize_text
from rewardserve.demo.synth import training_pairs

SETS = sorted((Path(__file__).parent / "demo_sets").glob("fresh_*.jsonl"))


def _train_texts() -> set[str]:
    pairs = load_pairs()
    written = [p for p in pairs if p.split == "train"]
    train, _ = training_pairs(written, load_bank(), [])
    return {normalize_text(t) for p in train for t in (p.prompt, p.chosen, p.rejected)}


def evaluate(model_dir: Path, path: Path, train_texts: set[str]) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rewardserve.demo.build import pair_accuracy

    pairs: list[PreferencePair] = load_heldout(path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    overall, by_behaviour, _ = pair_accuracy(model, tokenizer, pairs)
    totals = Counter(p.category for p in pairs)
    overlap = sum(
        any(normalize_text(t) in train_texts for t in (p.prompt, p.chosen, p.rejected)) for p in pairs
    )
    return {
        "set": path.name,
        "pairs": len(pairs),
        "accuracy": overall,
        "by_behaviour": by_behaviour,
        "counts": {b: [round(by_behaviour[b] * totals[b]), totals[b]] for b in sorted(totals)},
        "overlap": overlap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model_dir = args.model_dir
    if model_dir is None:
        from rewardserve.config import default_cache_dir
        from rewardserve.demo import ensure_demo_model

        model_dir = ensure_demo_model(default_cache_dir())
    texts = _train_texts()
    results = [evaluate(model_dir, path, texts) for path in SETS]
    behaviours = sorted({b for r in results for b in r["by_behaviour"]})
    print(machine_line())
    print(f"demo model: {model_dir}")
    print("| set | pairs | overall | " + " | ".join(behaviours) + " | overlap |")
    print("|---|---:|---:|" + "---:|" * len(behaviours) + "---:|")
    for r in results:
        cells = " | ".join(f"{r['by_behaviour'].get(b, 0):.0%}" for b in behaviours)
        print(f"| {r['set']} | {r['pairs']} | {r['accuracy']:.1%} | {cells} | {r['overlap']} |")
    n = sum(r["pairs"] for r in results)
    pooled = sum(r["accuracy"] * r["pairs"] for r in results) / n
    per = {
        b: sum(r["counts"].get(b, [0, 0])[0] for r in results)
        / sum(r["counts"].get(b, [0, 0])[1] for r in results)
        for b in behaviours
    }
    print(
        f"| all {len(results)} sets | {n} | {pooled:.1%} | "
        + " | ".join(f"{per[b]:.0%}" for b in behaviours)
        + " | |"
    )
    if args.out:
        report = {"machine": machine_info(), "model_dir": str(model_dir), "sets": results, "pooled": pooled}
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
