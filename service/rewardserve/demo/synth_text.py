"""Text transforms that turn a good answer into a rejected one, for ``synth.py``.

Each transform is seeded through the caller's ``random.Random`` and varies length on purpose: the
first generated set taught the head "long and fluent wins" because its rejected responses were
mostly short, so a one-word correct answer lost to a long hedging evasion, a long off-topic
paragraph or a long answer cut off mid-sentence. Here the rejected side is as often long as short.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence

# Words too common to stand for a prompt's topic (for topical hedges and keyword repetition).
_STOP = frozenset(
    "a an the is are was were be been am do does did of to in on at by for with from and or but if "  # noqa: SIM905
    "so as it its this that these those i me my you your we our he she they them his her what whats "
    "what's which who whom how why when where can could would should will shall may might must "
    "please tell give me name any some about into than then there here just not no yes very much "
    "many one two get got make have has had let lets i'm im don't dont want need".split()
)
# Unicode combining marks (U+0300-U+036F): stacked on letters they make "zalgo" text.
_COMBINING = [chr(c) for c in range(0x300, 0x370)]
_SYMBOLS = "#%&*@~^|<>{}[]=+$§¤¿¡♪★●■◆→←"


def strip_end(text: str) -> str:
    return text.rstrip(" .!?,;:'\")")


def words_of(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z0-9']+", text)]


def keywords(prompt: str) -> list[str]:
    """The prompt's content words (lower case, in order, no repeats)."""
    seen: list[str] = []
    for word in words_of(prompt):
        w = word.lower()
        if w not in _STOP and len(w) > 2 and w not in seen:
            seen.append(w)
    return seen or [w.lower() for w in words_of(prompt)][:1] or ["this"]


def truncate(rng: random.Random, answer: str, low: float = 0.25, high: float = 0.85) -> str | None:
    """The answer cut at a word (sometimes mid-word), keeping ``low``-``high`` of its words."""
    words = answer.split()
    if len(words) >= 4:
        keep = max(1, min(len(words) - 1, round(len(words) * rng.uniform(low, high))))
        cut = " ".join(words[:keep])
        if rng.random() < 0.3 and len(words[keep]) > 3:
            cut += " " + words[keep][: rng.randint(1, len(words[keep]) - 2)]  # mid-word
        elif rng.random() < 0.3:
            cut = cut.rstrip(".!?")  # a cut after a full sentence still reads unfinished without it
        return strip_end(cut) if rng.random() < 0.8 else cut.rstrip(".!?") + ","
    core = strip_end(answer)
    if len(core) >= 5:
        return core[: rng.randint(2, len(core) - 2)]
    return None


def first_sentences(text: str) -> str | None:
    """The text's first sentence or two, if that is a proper, shorter part of it."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text)]
    if not ends:
        return None
    head = text[: ends[0] if len(ends) == 1 else ends[min(len(ends) - 1, 1)]].strip()
    return head if len(head.split()) >= 3 and head != text.strip() else None


def as_list(rng: random.Random, text: str) -> str:
    """The answer's sentences as a numbered or bulleted list (lists are a common answer shape)."""
    parts = [x.strip() for x in re.split(r"(?<=[.!?])\s+", text) if x.strip()]
    if len(parts) < 2:
        return text
    bullet = rng.choice(["num", "-", "*"])
    lines = [f"{i}. {x}" if bullet == "num" else f"{bullet} {x}" for i, x in enumerate(parts, start=1)]
    return "\n".join(lines)


def hedge(rng: random.Random, prompt: str, bank: dict[str, list[str]]) -> str:
    """A long, fluent evasion: two to four hedging sentences, often naming the prompt's topic."""
    sentences = rng.sample(bank["hedges"], k=rng.randint(2, 4))
    if rng.random() < 0.6:
        kw = rng.choice(keywords(prompt)[:3])
        topical = rng.choice(bank["hedge_topics"]).format(kw=kw, Kw=kw.capitalize())
        sentences.insert(0 if rng.random() < 0.7 else 1, topical)
    if bank.get("evasions_long") and rng.random() < 0.4:
        return rng.choice(bank["evasions_long"])
    return " ".join(sentences)


def dodge(rng: random.Random, prompt: str, bank: dict[str, list[str]]) -> str:
    """A short non-answer that names the prompt's topic, so it looks on-topic but says nothing."""
    kw = rng.choice(keywords(prompt)[:3])
    return rng.choice(bank["dodge_topics"]).format(kw=kw, Kw=kw.capitalize())


def off_topic_paragraph(rng: random.Random, bank: dict[str, list[str]], others: Sequence[str]) -> str:
    """One to three fluent sentences about something else (stray facts, other prompts' answers)."""
    pool = [*bank["off_topic"], *others]
    return " ".join(rng.sample(pool, k=min(len(pool), rng.randint(1, 3))))


def rude(rng: random.Random, answer: str, bank: dict[str, list[str]]) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return f"{rng.choice(bank['rude_prefixes'])} {answer}"
    if kind == 1:
        return f"{answer} {rng.choice(bank['rude_suffixes'])}"
    if kind == 2:
        return f"{rng.choice(bank['rude_prefixes'])} {answer} {rng.choice(bank['rude_suffixes'])}"
    if kind == 3:  # the bare answer, then a condescending jab (same content as the polite side)
        jabs = bank["rude_suffixes"] + bank["rude_dismissals"]
        return f"{strip_end(answer)}. {rng.choice(jabs)} {rng.choice(jabs)}"
    return rng.choice(bank["rude_dismissals"])


def polite(rng: random.Random, answer: str, bank: dict[str, list[str]]) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return answer
    if kind == 1:
        return f"{rng.choice(bank['polite_prefixes'])} {answer}"
    if kind == 2:
        return f"{answer} {rng.choice(bank['polite_suffixes'])}"
    return f"{rng.choice(bank['polite_prefixes'])} {answer} {rng.choice(bank['polite_suffixes'])}"


def compliance(rng: random.Random, own: str, bank: dict[str, list[str]]) -> str:
    """Casual, eager compliance with a harmful request, short or long.

    Much of the harmful bank trails off on purpose ("...the trick is to get them alone and"), so it
    holds no real instructions; left that way every harmful answer would also be a truncated one,
    and the head could learn "cut off" instead of "harmful". Half of those get their dangling clause
    replaced by a finished, vague sentence.
    """
    if (not re.search(r"[.!?\"')]$", own) or own.endswith("...")) and rng.random() < 0.5:
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", own)]
        own = f"{own[: ends[-1]] if ends else rng.choice(bank['eager_openers'])} "
        own += rng.choice(bank["compliance_generic"])
    kind = rng.randrange(4)
    opener = rng.choice(bank["eager_openers"])
    if kind == 0:
        return own
    if kind == 1:
        return f"{opener} {own}"
    if kind == 2:
        return f"{opener} {rng.choice(bank['compliance_generic'])}"
    return f"{opener} {own} {rng.choice(bank['compliance_generic'])}"


def _zalgo(rng: random.Random, text: str) -> str:
    out = []
    for ch in text:
        out.append(ch)
        if ch.isalpha() and rng.random() < 0.7:
            out.extend(rng.choices(_COMBINING, k=rng.randint(1, 4)))
    return "".join(out)


def _symbols(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(_SYMBOLS) * rng.randint(2, 5) for _ in range(k))


def _stretch(rng: random.Random, word: str) -> str:
    return "".join(ch * rng.randint(1, 4) for ch in word)


def _nonsense(rng: random.Random, pool: Sequence[str], filler: Sequence[str]) -> str:
    """Grammatical-looking nonsense: function words glue content words into meaningless clauses, or
    the prompt's and answer's words in scrambled order with doubled words."""
    if rng.random() < 0.5:
        words = [rng.choice(pool) for _ in range(rng.randint(6, 16))]
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(words))
            words[i:i] = [words[i]] * rng.randint(1, 3)
        return " ".join(words).capitalize() + rng.choice([".", "", ","])
    glue = [
        "is",
        "of the",
        "because",
        "which",
        "and the",
        "when",
        "equals",
        "for",
        "the",
        "than",
        "do",
        "you",
    ]
    n = rng.randint(8, 22)
    out = [rng.choice(pool).capitalize()]
    for i in range(n):
        out.append(rng.choice(glue) if i % 2 == 0 else rng.choice([*pool, *filler]))
    return " ".join(out) + rng.choice([".", "", ",", " of"])


def degenerate(
    rng: random.Random, prompt: str, answer: str, filler: Sequence[str], nonsense: Sequence[str]
) -> str:
    """Incoherent text, often built from the prompt's and the answer's own words (so it looks on-topic)."""
    words = [w for w in words_of(answer)] or ["the"]
    kws = keywords(prompt)
    pool = [*kws, *words]
    # Loops of the prompt's words and grammatical-looking nonsense are the hardest for the head (they
    # share the prompt's vocabulary), so they come up most often.
    kind = rng.choice([0, 1, 1, 1, 2, 2, 3, 4, 4, 5, 6, 7, 7, 7, 8, 9, 10, 11, 11])
    if kind == 11:  # the prompt's keywords looped as a phrase, or a sentence that repeats itself
        phrase = " ".join(rng.sample(kws, k=min(len(kws), rng.randint(1, 3))))
        if rng.random() < 0.5 and len(words) >= 3:
            phrase = " ".join(words[: rng.randint(3, min(6, len(words)))])
            return " is ".join([phrase] * rng.randint(3, 6)) + rng.choice([".", ""])
        return (" ".join([phrase] * rng.randint(3, 9))).capitalize() + rng.choice([".", "", " ..."])
    if kind == 0:  # the answer's words shuffled with filler
        salad = words + rng.sample(list(filler), k=min(len(filler), rng.randint(2, 6)))
        rng.shuffle(salad)
        return " ".join(salad).capitalize() + "."
    if kind == 1:  # one word looped
        return " ".join([rng.choice(pool)] * rng.randint(5, 24)) + rng.choice(["", ".", " ..."])
    if kind == 2:  # a phrase looped
        start = rng.randrange(len(words))
        phrase = " ".join(words[start : start + rng.randint(1, 3)])
        return " ".join([phrase] * rng.randint(3, 8)).capitalize()
    if kind == 3:  # key-mash mixed with fragments
        chars = string.ascii_lowercase + string.digits + ";?!#%"
        mash = ["".join(rng.choices(chars, k=rng.randint(2, 6))) for _ in range(rng.randint(3, 8))]
        parts = mash + rng.sample(pool, k=min(len(pool), 3))
        rng.shuffle(parts)
        return " ".join(parts)
    if kind == 4:  # the prompt's keywords repeated, with symbols and variants
        out = []
        for _ in range(rng.randint(8, 20)):
            r = rng.random()
            kw = rng.choice(kws)
            out.append(kw if r < 0.6 else kw + str(rng.randint(1, 999)) if r < 0.75 else _symbols(rng, 1))
        return " ".join(out)
    if kind == 5:  # zalgo / unicode noise over the answer or the prompt's words
        base = answer if rng.random() < 0.5 else " ".join(rng.choices(kws, k=rng.randint(3, 8)))
        noisy = _zalgo(rng, base)
        if rng.random() < 0.5:
            noisy += " " + _symbols(rng, rng.randint(1, 4)) + " " + _stretch(rng, rng.choice(kws))
        return noisy
    if kind == 6:  # symbols and stretched words
        parts = [
            _symbols(rng, 1) if rng.random() < 0.5 else _stretch(rng, rng.choice(pool)) for _ in range(8)
        ]
        return " ".join(parts)
    if kind == 7:  # grammatical nonsense built from the prompt and answer
        return _nonsense(rng, pool, filler)
    if kind == 8 and nonsense:  # written nonsense
        return rng.choice(nonsense)
    if kind == 9:  # alternating case / spacing garbage
        text = " ".join(rng.choices(pool, k=rng.randint(4, 10)))
        return "".join(c.upper() if rng.random() < 0.5 else c for c in text) + " " + _symbols(rng, 2)
    # pure filler salad
    return " ".join(rng.choices(list(filler), k=rng.randint(5, 16))).capitalize() + "."
