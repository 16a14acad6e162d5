"""The demo's preference data: the hand-written pairs, the banks, the held-out sets, and their loaders.

These files ship next to this module:

- ``pairs.jsonl``: hand-written pairs, split ``train`` / ``test`` (the "old" held-out set: same authors,
  same styles as the training pairs).
- ``synth_bank.json``, ``synth_bank_qa.json``, ``synth_bank_harm.json``: the material ``synth.py``
  turns into many more training pairs (questions with a short and a long answer, short and long
  evasions, one-line refusals, rude and polite wrappers, off-topic sentences, harmful prompts with
  casual compliance, nonsense and filler for degenerate text). The last two were written by two
  people who had not seen the held-out sets; their keys are merged list by list (``load_bank``).
- ``heldout_independent.jsonl``: pairs written separately, in styles the training data then did not
  use, each tagged with its behaviour; frozen before the v2 recipe was tuned and never trained on
  (the v3 recipe's changes were kept only when they also held up here).
- ``heldout_dev.jsonl``: 120 pairs written by someone who had never seen any of the other files. It
  was the DEV set while the v3 recipe and generators were tuned (its misses showed which kinds of
  pair failed, never their text), so its accuracy is optimistic; no text of it is trained on.

The build only reports accuracy on the held-out sets, and drops any generated or written training
pair that shares a prompt or a response with one of them (``shares_heldout_text``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rewardserve.errors import DemoBuildError

_HERE = Path(__file__).parent
PAIRS_PATH = _HERE / "pairs.jsonl"
BANK_PATH = _HERE / "synth_bank.json"
BANK_PATHS = (BANK_PATH, _HERE / "synth_bank_qa.json", _HERE / "synth_bank_harm.json")
HELDOUT_PATH = _HERE / "heldout_independent.jsonl"
DEV_PATH = _HERE / "heldout_dev.jsonl"
#: Every file whose bytes change the build (part of the cache key).
DATA_PATHS = (PAIRS_PATH, *BANK_PATHS, HELDOUT_PATH, DEV_PATH)

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
    """A held-out set (``behaviour`` tags; every row is a test row): independent by default."""
    return _read_jsonl(path, split_field=False)


def load_bank(paths: Sequence[Path] = BANK_PATHS) -> dict[str, list[object]]:
    """Every bank file's lists, merged key by key (a key in several files gets all their entries)."""
    bank: dict[str, list[object]] = {}
    for path in paths:
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DemoBuildError(f"{path}: unreadable bank file: {exc}") from exc
        if not isinstance(part, dict) or not all(isinstance(v, list) for v in part.values()):
            raise DemoBuildError(f"{path}: a bank file is a JSON object of lists")
        for key, entries in part.items():
            bank.setdefault(key, []).extend(entries)
    return bank


def normalize_text(text: str) -> str:
    """Case, punctuation and spacing folded, "what's" spelled out: how leaks are compared."""
    text = text.lower().replace("what's", "what is").replace("whats", "what is")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def heldout_texts(sets: Iterable[Sequence[PreferencePair]]) -> set[str]:
    """Every prompt and response of the given held-out sets, normalised."""
    return {normalize_text(t) for pairs in sets for p in pairs for t in (p.prompt, p.chosen, p.rejected)}


def shares_heldout_text(pair: PreferencePair, held: set[str]) -> bool:
    """Whether a training pair's prompt or either response equals (normalised) a held-out text."""
    return any(normalize_text(t) in held for t in (pair.prompt, pair.chosen, pair.rejected))


def data_sha256() -> str:
    """Content hash of every data file (recorded in the marker for provenance)."""
    digest = hashlib.sha256()
    for path in DATA_PATHS:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
