"""Many more, more varied training pairs, generated from the bank files and the train split.

The hand-written pairs alone taught the head their authors' styles (long, hedging evasions), not the
behaviours; a first generated set fixed that but leaned the other way on length: its rejected
responses were mostly short, so a one-word correct answer lost to a long hedging evasion, a long
off-topic paragraph or a long answer cut off mid-sentence, and an eager "Sure!" won over a one-line
refusal of a clearly harmful request. So here, for every (prompt, short answer, long answer) item,
each behaviour gets rejected responses both longer and shorter than the chosen one, and surface cues
appear on both sides (``synth_text.py`` builds them):

- evasive: long hedging evasions (often naming the prompt's topic), short dodges, one-line refusals
  of a harmless request; the chosen side is the short or the long answer;
- off-topic: another item's answer or one to three stray facts, fluent and often longer;
- rude: the same answer wrapped in insults or followed by a jab, or a bare insult; the chosen side is
  the answer plain or with a friendly opener or closer;
- truncated: the long answer cut anywhere from a quarter to near its end (sometimes after a friendly
  opener), beaten by the short complete answer as often as by the long one;
- degenerate: word salad, loops, key-mash, the prompt's keywords repeated with symbols, zalgo
  (combining-mark) noise, grammatical nonsense made of the prompt's and answer's words;
- harmful: the prompt decides. For a harmful prompt a refusal (one line or longer) beats casual,
  eager compliance; for a harmless one an eager "Sure! <answer>" beats a one-line refusal.

Everything is seeded: the same bank gives the same pairs, so the build stays reproducible and cached.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rewardserve.demo import synth_text as tx
from rewardserve.demo.data import PreferencePair, heldout_texts, shares_heldout_text

_SEED = 1234
# An answer of at most this many words counts as "short" when an item has only one answer.
_SHORT_WORDS = 8


@dataclass(frozen=True)
class Item:
    prompt: str
    short: str | None
    long: str | None

    def answers(self) -> list[str]:
        return [a for a in (self.short, self.long) if a]


def _items(bank_raw: dict[str, list[object]], train: Sequence[PreferencePair]) -> list[Item]:
    by_prompt: dict[str, Item] = {}

    def put(prompt: str, answers: Sequence[str]) -> None:
        short = next((a for a in answers if len(a.split()) <= _SHORT_WORDS), None)
        long = next((a for a in answers if len(a.split()) > _SHORT_WORDS), None)
        if prompt not in by_prompt:
            by_prompt[prompt] = Item(prompt, short, long)

    for row in bank_raw.get("qa", []):
        assert isinstance(row, list), row
        put(str(row[0]), [str(a) for a in row[1:] if a])
    for p in train:
        if p.category != "safe_refusal_vs_harmful":
            put(p.prompt, [p.chosen])
    return list(by_prompt.values())


def _harmful(
    bank_raw: dict[str, list[object]], train: Sequence[PreferencePair]
) -> list[tuple[str, str, str | None]]:
    rows: list[tuple[str, str, str | None]] = []
    for row in bank_raw.get("harmful", []):
        assert isinstance(row, list), row
        rows.append((str(row[0]), str(row[1]), str(row[2]) if len(row) > 2 and row[2] else None))
    rows += [(p.prompt, p.rejected, p.chosen) for p in train if p.category == "safe_refusal_vs_harmful"]
    return rows


def synthesize(bank_raw: dict[str, list[object]], train: Sequence[PreferencePair]) -> list[PreferencePair]:
    """Generated training pairs (split ``train``), several per behaviour for every item."""
    rng = random.Random(_SEED)
    bank = {k: [x for x in v if isinstance(x, str)] for k, v in bank_raw.items()}
    items = _items(bank_raw, train)
    long_answers = [a for it in items for a in it.answers() if len(a.split()) > _SHORT_WORDS]
    short_answers = [it.short for it in items if it.short]
    evasions = bank["evasions"] + bank.get("evasions_short", [])
    refusals_harmless = bank["refusals"] + bank.get("refusals_harmless", [])
    refusals = bank["refusals"] + bank.get("refusals_generic", [])
    filler, nonsense = bank["filler"], bank.get("nonsense", [])
    out: list[PreferencePair] = []

    def add(prompt: str, chosen: str, rejected: str, category: str) -> None:
        if chosen != rejected and chosen and rejected:
            out.append(PreferencePair(prompt, chosen, rejected, category, "train"))

    for it in items:
        answers = it.answers()
        p = it.prompt

        def pick(answers: Sequence[str] = answers) -> str:
            return rng.choice(answers)

        def against(rejected: str, category: str, chosen: Sequence[str] = answers, p: str = p) -> None:
            # Every rejected row is paired with each chosen answer (short and long): more pairs for
            # no more rows, and the same rejection loses to a short and to a long answer alike.
            for c in chosen:
                add(p, c, rejected, category)

        # Helpful vs evasive: a long hedge and a short dodge or harmless-request refusal.
        against(tx.hedge(rng, p, bank), "helpful_vs_evasive")
        dodge = rng.choice([rng.choice(evasions), rng.choice(refusals_harmless), tx.dodge(rng, p, bank)])
        against(dodge, "helpful_vs_evasive")
        if rng.random() < 0.3:  # an eager opener is fine when the request is harmless
            eager = f"{rng.choice(bank['eager_openers'])} {pick()}"
            add(p, eager, rng.choice(refusals_harmless), "helpful_vs_evasive")
        # On-topic vs off-topic: another item's long answer, a single stray fact or short answer,
        # or a paragraph of them; longer and shorter than the on-topic answer alike.
        others = [a for a in rng.sample(long_answers, k=4) if a not in answers]
        against(others[0] if others else tx.off_topic_paragraph(rng, bank, []), "on_topic_vs_off_topic")
        stray = rng.choice(short_answers) if rng.random() < 0.3 else rng.choice(bank["off_topic"])
        if stray not in answers:
            against(stray, "on_topic_vs_off_topic")
        if rng.random() < 0.2:
            against(tx.off_topic_paragraph(rng, bank, others[1:]), "on_topic_vs_off_topic")
        # Polite vs rude: same content on both sides, so only the manners differ.
        a = pick()
        against(tx.rude(rng, a, bank), "polite_vs_rude", [tx.polite(rng, a, bank)])
        # Complete vs truncated: the cut long answer loses to the short one and to itself whole; a
        # complete first sentence or two beats the longer whole cut further on.
        if it.long:
            long = tx.as_list(rng, it.long) if rng.random() < 0.2 else it.long
            shorter = [x for x in (it.short, tx.first_sentences(long)) if x]
            # A cut near the end (the hardest to tell), and for half the items one further back.
            # The whole answer always beats its cut, and a shorter complete one (the short answer,
            # or the first sentences) beats it at most as often: otherwise "of two texts that
            # start alike, the shorter wins" would fit the data as well as "the finished one wins".
            for low, high in [(0.6, 0.95)] + ([(0.2, 0.6)] if rng.random() < 0.5 else []):
                cut = tx.truncate(rng, long, low, high)
                if cut and rng.random() < 0.3:
                    cut = f"{rng.choice(bank['polite_prefixes'] + bank['eager_openers'])} {cut}"
                if cut:
                    extra = [rng.choice(shorter)] if shorter and rng.random() < 0.5 else []
                    against(cut, "complete_vs_truncated", [long, *extra])
        if it.short:
            cut = tx.truncate(rng, it.short)
            if cut:
                add(p, it.short, cut, "complete_vs_truncated")
        # Coherent vs degenerate: noise built from the prompt's and answer's own words.
        for _ in range(2 if rng.random() < 0.5 else 1):
            against(tx.degenerate(rng, p, pick(), filler, nonsense), "coherent_vs_degenerate")
    for prompt, own, own_refusal in _harmful(bank_raw, train):
        # Two refusals (the prompt's own, or a generic one-liner) against two styles of compliance.
        chosen = [own_refusal or rng.choice(refusals), rng.choice(refusals)]
        # dict, not set: a set of strings iterates in a per-process order, and the build must not.
        for rejected in dict.fromkeys(tx.compliance(rng, own, bank) for _ in range(2)):
            for refusal in chosen:
                add(prompt, refusal, rejected, "safe_refusal_vs_harmful")
    return out


def training_pairs(
    written: Sequence[PreferencePair],
    bank: dict[str, list[object]],
    heldout: Sequence[Sequence[PreferencePair]],
) -> tuple[list[PreferencePair], int]:
    """The written train pairs plus the generated ones, less any that share text with a held-out set.

    A held-out pair's prompt or response may reach the training data by coincidence (a common
    question such as a capital city, a one-word answer, a stock refusal) even though nobody copied
    it; dropping those keeps the held-out accuracies honest. Returns the pairs and how many were
    dropped.
    """
    held = heldout_texts(heldout)
    pairs = [*written, *synthesize(bank, written)]
    kept = [p for p in pairs if not shares_heldout_text(p, held)]
    return kept, len(pairs) - len(kept)
