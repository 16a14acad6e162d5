"""The demo's preference data: the hand-written pairs, the independent held-out set, and their loaders.

Three files ship next to this module:

- ``pairs.jsonl``: hand-written pairs, split ``train`` / ``test`` (the "old" held-out set: same authors,
  same styles as the training pairs).
- ``synth_bank.json``: the material ``synth.py`` turns into many more training pairs (short answers,
  evasions, one-line refusals, rude wrappers, off-topic sentences, harmful prompts with casual
  compliance, filler words for degenerate text).
- ``heldout_independent.jsonl``: pairs written separately, in styles the training data does not use,
  each tagged with its behaviour; frozen before the recipe was tuned and never trained on. The build
  only reports accuracy on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rewardserve.errors import DemoBuildError

_HERE = Path(__file__).parent
PAIRS_PATH = _HERE / "pairs.jsonl"
BANK_PATH = _HERE / "synth_bank.json"
HELDOUT_PATH = _HERE / "heldout_independent.jsonl"
#: Every file whose bytes change the build (part of the cache key).
DATA_PATHS = (PAIRS_PATH, BANK_PATH, HELDOUT_PATH)

#: The six behaviours the demo model claims to judge (``category`` / ``behaviour`` values).
BEHAVIOURS = (
    "helpful_vs_evasive",
    "on_topic_vs_off_topic",
    "polite_vs_rude",
    "complete_vs_truncated",
    "safe_refusal_vs_harmful",
    "coherent_vs_degenerate",
)
_SPLITS = ("train", "test")


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    category: str
    split: str


def _read_jsonl(path: Path, split_field: bool) -> list[PreferencePair]:
    pairs: list[PreferencePair] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pair = PreferencePair(
                    prompt=row["prompt"],
                    chosen=row["chosen"],
                    rejected=row["rejected"],
                    category=row["category"] if split_field else row["behaviour"],
                    split=row["split"] if split_field else "test",
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DemoBuildError(f"{path}:{lineno}: bad preference pair: {exc}") from exc
            fields = (pair.prompt, pair.chosen, pair.rejected, pair.category)
            if not all(isinstance(f, str) and f for f in fields):
                raise DemoBuildError(f"{path}:{lineno}: prompt/chosen/rejected/category must be non-empty")
            if pair.split not in _SPLITS:
                raise DemoBuildError(f"{path}:{lineno}: split must be one of {_SPLITS}, got {pair.split!r}")
            if pair.category not in BEHAVIOURS:
                raise DemoBuildError(f"{path}:{lineno}: behaviour must be one of {BEHAVIOURS}")
            if pair.chosen == pair.rejected:
                raise DemoBuildError(f"{path}:{lineno}: chosen and rejected are identical")
            pairs.append(pair)
    return pairs


def load_pairs(path: Path = PAIRS_PATH) -> list[PreferencePair]:
    """Parse and validate ``pairs.jsonl``; a malformed line fails loudly with its line number."""
    return _read_jsonl(path, split_field=True)


def load_heldout(path: Path = HELDOUT_PATH) -> list[PreferencePair]:
    """The independent held-out set (``behaviour`` tags; every row is a test row)."""
    return _read_jsonl(path, split_field=False)


def load_bank(path: Path = BANK_PATH) -> dict[str, list[object]]:
    bank: dict[str, list[object]] = json.loads(path.read_text(encoding="utf-8"))
    return bank


def data_sha256() -> str:
    """Content hash of every data file (recorded in the marker for provenance)."""
    digest = hashlib.sha256()
    for path in DATA_PATHS:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
