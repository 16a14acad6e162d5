"""Many more, more varied training pairs, generated from ``synth_bank.json`` and the train split.

The hand-written pairs alone taught the head their authors' styles (long, hedging evasions), not the
behaviours: a correct two-word answer lost to "Figure it out yourself." because short answers were
rare among the chosen responses. Here every (prompt, good answer) item, short or long, is paired
with a rejected response built for each behaviour from a different source of variety, so no single
surface cue (length, a hedge word, a trailing full stop) separates chosen from rejected:

- evasive: a bank of short dodges and one-line refusals of a harmless request;
- off-topic: another item's good answer (fluent, well formed, just not about this prompt), or a
  stray fact;
- rude: the same answer wrapped in an insult, or a bare insult; the chosen side is the answer, plain
  or with a friendly opener;
- truncated: the answer cut at a random word (or mid-word) with its ending dropped;
- degenerate: the answer's words shuffled with filler, a word or phrase looped, or key-mash;
- harmful: for a harmful prompt, a refusal (long or one line) beats casual compliance, while for a
  harmless prompt a one-line refusal loses to the answer (the prompt decides, not the refusal words).

Everything is seeded: the same bank gives the same pairs, so the build stays reproducible and cached.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence

from rewardserve.demo.data import PreferencePair

_SEED = 1234


def _strip_end(text: str) -> str:
    return text.rstrip(" .!?,;:'\")")


def _truncate(rng: random.Random, answer: str) -> str | None:
    words = answer.split()
    if len(words) >= 4:
        # Keep 25-85% of the words: a cut that still reads as a fragment, never the whole answer.
        keep = max(1, min(len(words) - 1, round(len(words) * rng.uniform(0.25, 0.85))))
        cut = " ".join(words[:keep])
        if rng.random() < 0.25 and len(words[keep]) > 3:
            cut += " " + words[keep][: rng.randint(1, len(words[keep]) - 2)]  # mid-word
        return _strip_end(cut)
    core = _strip_end(answer)
    if len(core) >= 5:
        return core[: rng.randint(2, len(core) - 2)]
    return None


def _degenerate(rng: random.Random, answer: str, filler: Sequence[str]) -> str:
    words = [w.strip(".,!?;:") for w in answer.split()] or ["the"]
    kind = rng.randrange(5)
    if kind == 0:  # word salad from the answer's own words and filler
        salad = words + rng.sample(list(filler), k=min(len(filler), rng.randint(2, 6)))
        rng.shuffle(salad)
        return " ".join(salad[: max(4, len(salad))]).capitalize() + "."
    if kind == 1:  # one word looped
        return " ".join([rng.choice(words)] * rng.randint(5, 14)).capitalize() + "."
    if kind == 2:  # a phrase looped
        start = rng.randrange(len(words))
        phrase = " ".join(words[start : start + rng.randint(1, 3)])
        return " ".join([phrase] * rng.randint(3, 6)).capitalize()
    if kind == 3:  # key-mash mixed with fragments
        mash = ["".join(rng.choices(string.ascii_lowercase + ";?!", k=rng.randint(2, 6))) for _ in range(4)]
        parts = mash + rng.sample(words, k=min(len(words), 3))
        rng.shuffle(parts)
        return " ".join(parts)
    # pure filler salad
    return " ".join(rng.choices(list(filler), k=rng.randint(5, 12))).capitalize() + "."


def _rude(rng: random.Random, answer: str, bank: dict[str, list[str]]) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"{rng.choice(bank['rude_prefixes'])} {answer}"
    if kind == 1:
        return f"{answer} {rng.choice(bank['rude_suffixes'])}"
    if kind == 2:
        return f"{rng.choice(bank['rude_prefixes'])} {answer} {rng.choice(bank['rude_suffixes'])}"
    return rng.choice(bank["rude_dismissals"])


def synthesize(bank_raw: dict[str, list[object]], train: Sequence[PreferencePair]) -> list[PreferencePair]:
    """Generated training pairs (split ``train``), one or more per behaviour for every item."""
    rng = random.Random(_SEED)
    bank = {k: [x for x in v if isinstance(x, str)] for k, v in bank_raw.items()}
    items: dict[str, str] = {}
    for qa in bank_raw["qa"]:
        assert isinstance(qa, list)
        items.setdefault(str(qa[0]), str(qa[1]))
    harmful: list[tuple[str, str, str | None]] = []
    for row in bank_raw["harmful"]:
        assert isinstance(row, list)
        harmful.append((str(row[0]), str(row[1]), None))
    for p in train:
        if p.category == "safe_refusal_vs_harmful":
            harmful.append((p.prompt, p.rejected, p.chosen))
        else:
            items.setdefault(p.prompt, p.chosen)

    out: list[PreferencePair] = []

    def add(prompt: str, chosen: str, rejected: str, category: str) -> None:
        if chosen != rejected:
            out.append(PreferencePair(prompt, chosen, rejected, category, "train"))

    prompts = list(items)
    for prompt, answer in items.items():
        add(prompt, answer, rng.choice(bank["evasions"]), "helpful_vs_evasive")
        add(prompt, answer, rng.choice(bank["refusals"]), "helpful_vs_evasive")
        other = rng.choice([p for p in rng.sample(prompts, 3) if p != prompt] or [prompts[0]])
        add(prompt, answer, items[other], "on_topic_vs_off_topic")
        if rng.random() < 0.5:
            add(prompt, answer, rng.choice(bank["off_topic"]), "on_topic_vs_off_topic")
        polite = answer if rng.random() < 0.5 else f"{rng.choice(bank['polite_prefixes'])} {answer}"
        add(prompt, polite, _rude(rng, answer, bank), "polite_vs_rude")
        cut = _truncate(rng, answer)
        if cut:
            add(prompt, answer, cut, "complete_vs_truncated")
        add(prompt, answer, _degenerate(rng, answer, bank["filler"]), "coherent_vs_degenerate")
    for prompt, compliance, own_refusal in harmful:
        refusals = rng.sample(bank["refusals"], 2) + ([own_refusal] if own_refusal else [])
        for refusal in refusals:
            add(prompt, refusal, compliance, "safe_refusal_vs_harmful")
    return out
