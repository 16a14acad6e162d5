"""Tiny tokenizers trained offline, and benchmark text of a chosen token length.

Tokenizers
----------
``bpe`` (decoder models): byte-level BPE with Qwen2's pre-tokenizer, so every string encodes and no
unknown token exists. Special tokens ``<|bos|>`` ``<|eos|>`` ``<|pad|>`` ``<|system|>`` ``<|user|>``
``<|assistant|>``. By default there is **no post-processor**: ``tokenizer(text)`` returns exactly the
text's tokens, with no bos/eos (like Qwen2, unlike Llama 3). The chat template is where bos comes
from::

    <|bos|><|system|>{content}<|eos|><|user|>{content}<|eos|><|assistant|>{content}<|eos|>

and, with ``add_generation_prompt=True``, a trailing ``<|assistant|>``. So rendering a chat and
tokenizing it with the default ``add_special_tokens=True`` gives exactly one bos. ``build_tokenizer(...,
add_bos=True)`` builds the Llama-3 style variant instead (a post-processor that prepends bos), for tests
of the double-bos trap. ``pad`` is its own token, never eos: a sequence-classification head finds the
last real token by looking for ``pad_token_id``, and pad == eos would hide a trailing eos.

``wordpiece`` (bert): BERT-style, lowercasing, ``[PAD]=0 [UNK] [CLS] [SEP] [MASK]``; the post-processor
gives ``[CLS] a [SEP]`` and ``[CLS] a [SEP] b [SEP]`` with ``token_type_ids`` 0 then 1. No chat template.
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path
from typing import Any, Final, Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

# transformers 5 ships py.typed but leaves constructors and from_config unannotated, so strict mypy
# flags those few calls; they carry a targeted ignore rather than typing the whole module as Any.

__all__ = [
    "BPE_SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "WORDPIECE_SPECIAL_TOKENS",
    "TokenizerKind",
    "build_tokenizer",
    "lognormal_lengths",
    "make_text",
    "make_tokenizer",
]

TokenizerKind = Literal["bpe", "wordpiece"]

BPE_SPECIAL_TOKENS: Final = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>")
# [PAD] first so its id is 0, as in BERT: BertEmbeddings zeroes the padding_idx row.
WORDPIECE_SPECIAL_TOKENS: Final = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# bos once, each turn wrapped in its role marker and closed by eos, then the generation prompt.
# Unknown roles render as plain text ("<|tool|>" is not a special token); content must be a string.
CHAT_TEMPLATE: Final = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# ---------------------------------------------------------------------------------------------------
# Deterministic corpus
# ---------------------------------------------------------------------------------------------------

# About 900 common English words: enough that a 1000-entry BPE keeps some words in several pieces
# (so token counts differ from word counts, as with real tokenizers) while frequent ones are single
# tokens.
_WORD_TEXT: Final = """
    the of and to in is it you that he was for on are with as his they be at one have this from or had
    by hot word but what some we can out other were all there when up use your how said an each she
    which do their time if will way about many then them write would like so these her long make thing
    see him two has look more day could go come did number sound no most people my over know water than
    call first who may down side been now find any new work part take get place made live where after
    back little only round man year came show every good me give our under name very through just form
    sentence great think say help low line differ turn cause much mean before move right boy old too
    same tell does set three want air well also play small end put home read hand port large spell add
    even land here must big high such follow act why ask men change went light kind off need house
    picture try us again animal point mother world near build self earth father head stand own page
    should country found answer school grow study still learn plant cover food sun four between state
    keep eye never last let thought city tree cross farm hard start might story saw far sea draw left
    late run while press close night real life few north open seem together next white children begin
    got walk example ease paper group always music those both mark often letter until mile river car
    feet care second book carry took science eat room friend began idea fish mountain stop once base
    hear horse cut sure watch color face wood main enough plain girl usual young ready above ever red
    list though feel talk bird soon body dog family direct pose leave song measure door product black
    short numeral class wind question happen complete ship area half rock order fire south problem piece
    told knew pass since top whole king space heard best hour better true during hundred five remember
    step early hold west ground interest reach fast verb sing listen six table travel less morning ten
    simple several vowel toward war lay against pattern slow center love person money serve appear road
    map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark
    machine note wait plan figure star box noun field rest correct able pound done beauty drive stood
    contain front teach week final gave green quick develop ocean warm free minute strong special mind
    behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object
    decide surface deep moon island foot system busy test record boat common gold possible plane stead
    dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes
    distant fill east paint language among grand ball yet wave drop heart present heavy dance engine
    position arm wide sail material size vary settle speak weight general ice matter circle pair include
    divide syllable felt perhaps pick sudden count square reason length represent art subject region
    energy hunt probable bed brother egg ride cell believe fraction forest sit race window store summer
    train sleep prove lone exercise wall catch mount wish sky board joy winter sat written wild
    instrument kept glass grass cow job edge sign visit past soft fun bright gas weather month million
    bear finish happy hope flower clothe strange gone jump baby eight village meet root buy raise solve
    metal whether push seven paragraph third shall held hair describe cook floor either result burn hill
    safe cat century consider type law bit coast copy phrase silent tall sand soil roll temperature
    finger industry value fight lie beat excite natural view sense capital chair danger fruit rich
    thick soldier process operate practice separate difficult doctor please protect noon crop modern
    element hit student corner party supply whose locate ring character insect caught period indicate
    radio spoke atom human history effect electric expect bone rail imagine provide agree thus gentle
    woman captain guess necessary sharp wing create neighbor wash bat rather crowd corn compare poem
    string bell depend meat rub tube famous dollar stream fear sight thin triangle planet hurry chief
    colony clock mine tie enter major fresh search send yellow gun allow print dead spot desert suit
    current lift rose arrive master track parent shore division sheet substance favor connect post spend
    chord fat glad original share station dad bread charge proper bar offer segment slave duck instant
    market degree populate chick dear enemy reply drink occur support speech nature range steam motion
    path liquid log meant quotient teeth shell neck oxygen sugar death pretty skill women season
    solution magnet silver thank branch match suffix especially fig afraid huge sister steel discuss
    forward similar guide experience score apple bought led pitch coat mass card band rope slip win
    dream evening condition feed tool total basic smell valley nor double seat continue block chart hat
    sell success company subtract event particular deal swim term opposite wife shoe shoulder spread
    arrange camp invent cotton born determine quart nine truck noise level chance gather shop stretch
    throw shine property column molecule select wrong gray repeat require broad prepare salt nose
    plural anger claim continent
    """
_WORDS: Final = tuple(_WORD_TEXT.split())
# Qwen2's pre-tokenizer split (transformers/models/qwen2/tokenization_qwen2.py): words keep one
# leading non-letter, digits split one by one, punctuation runs stay together.
_QWEN2_SPLIT_REGEX: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CONNECTORS: Final = ("and", "but", "so", "because", "while", "although", "then")
_OPENERS: Final = ("Question:", "Answer:", "Note:", "Step 1:", "Summary:", "Q:", "A:")


def _number(rng: random.Random) -> str:
    """A number in one of the shapes real text has: small int, year, decimal, percent, big int."""
    shape = rng.randrange(5)
    if shape == 0:
        return str(rng.randrange(100))
    if shape == 1:
        return str(rng.randrange(1900, 2030))
    if shape == 2:
        return f"{rng.uniform(0, 100):.{rng.randrange(1, 4)}f}"
    if shape == 3:
        return f"{rng.randrange(101)}%"
    return f"{rng.randrange(1000, 10_000_000):,}"


def _sentence(rng: random.Random) -> str:
    """One English-like sentence: capitalised, with occasional numbers, commas, quotes and parens."""
    parts: list[str] = []
    for i in range(rng.randint(3, 16)):
        roll = rng.random()
        if roll < 0.06:
            parts.append(_number(rng))
        elif roll < 0.10 and i > 1:
            parts[-1] += ","
            parts.append(rng.choice(_CONNECTORS))
        else:
            parts.append(rng.choice(_WORDS))
    if rng.random() < 0.05:
        parts[0] = '"' + parts[0]
        parts[-1] += '"'
    elif rng.random() < 0.05 and len(parts) > 3:
        parts[1] = "(" + parts[1]
        parts[2] += ")"
    parts[0] = parts[0][:1].upper() + parts[0][1:]
    text = " ".join(parts) + rng.choice(".....?!:;")
    if rng.random() < 0.08:
        text = rng.choice(_OPENERS) + " " + text
    return text


@functools.cache
def _corpus() -> tuple[str, ...]:
    """4000 lines of 1-3 sentences from a fixed seed; cached because every build trains on it."""
    rng = random.Random(20240601)
    return tuple(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))) for _ in range(4000))


# ---------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------


_WORD_START: Final = "\u2581"


def _wordpiece_vocab(
    normalizer: normalizers.Normalizer, pre_tokenizer: pre_tokenizers.PreTokenizer, vocab_size: int
) -> dict[str, int]:
    """A WordPiece vocabulary learned by plain BPE, so that it is the same in every process.

    tokenizers' WordPieceTrainer (like BpeTrainer with a continuing_subword_prefix) numbers its "##"
    alphabet in Rust hash-map order, which is seeded per process; ties between merges then break
    differently and both the ids and the learned pieces change from run to run. BpeTrainer without
    a prefix is deterministic, so train it on words that carry a word-start mark and rename the
    result: "\u2581piece" starts a word ("piece"), "piece" continues one ("##piece").
    """
    # Lowercase printable ASCII (the normalizer lowercases): with every char in both forms, ASCII
    # text never turns into [UNK], even symbols the corpus lacks.
    alphabet = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    lines = [
        " ".join(
            _WORD_START + word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
        )
        for line in _corpus()
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=[*alphabet, _WORD_START], show_progress=False
    )
    bpe.train_from_iterator(lines, trainer=trainer)
    pieces = [*WORDPIECE_SPECIAL_TOKENS, *alphabet, *("##" + c for c in alphabet)]
    for token, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1]):
        if token != _WORD_START:
            pieces.append(token.removeprefix(_WORD_START) if token.startswith(_WORD_START) else "##" + token)
    vocab: dict[str, int] = {}
    for piece in pieces:  # BPE's id order: alphabet, then merges by frequency; the tail is cut
        if len(vocab) == vocab_size:
            break
        vocab.setdefault(piece, len(vocab))
    return vocab


@functools.cache
def _trained_tokenizer_json(kind: TokenizerKind, vocab_size: int) -> str:
    """Train once per (kind, vocab_size) per process and hand out copies as JSON.

    Training is deterministic (checked by the tests), so caching changes nothing but the time: a test
    session builds seven models on two tokenizers.
    """
    tok: Tokenizer
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        # Exactly Qwen2's pipeline (NFC, Qwen2's split regex, byte-level without its own regex):
        # transformers 5 ignores tokenizer_config's class for model_type "qwen2" and rebuilds the
        # tokenizer as Qwen2Tokenizer from the vocab and merges, with this pipeline hard-coded. Any
        # other pipeline would give the qwen2 model different ids from the other archs' (tested).
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
                # add_prefix_space=False: "Hello" after "<|user|>" must not grow a space the chat
                # template never wrote.
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        bpe_trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(BPE_SPECIAL_TOKENS),
            # All 256 byte symbols up front: any UTF-8 string encodes, even bytes the corpus lacks.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_corpus(), trainer=bpe_trainer)
    elif kind == "wordpiece":
        normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok = Tokenizer(
            models.WordPiece(
                vocab=_wordpiece_vocab(normalizer, pre_tokenizer, vocab_size),
                unk_token="[UNK]",
                continuing_subword_prefix="##",
                max_input_chars_per_word=100,
            )
        )
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre_tokenizer
        tok.decoder = decoders.WordPiece(prefix="##")
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'bpe' or 'wordpiece'")
    return str(tok.to_str())


def make_tokenizer(
    kind: TokenizerKind, vocab_size: int, *, add_bos: bool = False, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    if vocab_size < 300:
        # Byte-level BPE needs 256 + specials before its first merge.
        raise ValueError(f"vocab_size must be >= 300, got {vocab_size}")
    tok = Tokenizer.from_str(_trained_tokenizer_json(kind, vocab_size))
    extra: dict[str, Any] = {}
    if model_max_length is not None:
        extra["model_max_length"] = model_max_length
    if kind == "bpe":
        if add_bos:
            bos_id = tok.token_to_id("<|bos|>")
            tok.post_processor = processors.TemplateProcessing(
                single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos_id)]
            )
        return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
            tokenizer_object=tok,
            # Written out as "unk_token": null. Without it, the Qwen2Tokenizer that transformers
            # substitutes for qwen2 dirs defaults unk to "<|endoftext|>" and appends it as id
            # len(vocab), one past the model's embedding table. Byte-level BPE never needs unk.
            unk_token=None,
            bos_token="<|bos|>",
            eos_token="<|eos|>",
            pad_token="<|pad|>",
            additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
            # Decoder forward() takes no token_type_ids; returning them would break model(**enc).
            model_input_names=["input_ids", "attention_mask"],
            chat_template=CHAT_TEMPLATE,
            **extra,
        )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        **extra,
    )


def build_tokenizer(
    out_dir: Path, *, kind: TokenizerKind = "bpe", vocab_size: int = 1000, add_bos: bool = False
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on the built-in corpus, save it to ``out_dir`` and return it.

    ``vocab_size`` is the trainer's target; the corpus supports up to ~4400 (bpe) or ~2800
    (wordpiece) entries, and larger targets stop there. ``add_bos`` (bpe only) adds a post-processor
    that prepends ``<|bos|>`` to every ``tokenizer(text)`` call, Llama-3 style; the default adds
    nothing. Don't pair the add_bos variant with a qwen2 config: transformers rebuilds qwen2
    tokenizers without their post-processor.
    """
    if add_bos and kind != "bpe":
        raise ValueError("add_bos applies to the bpe tokenizer only")
    tokenizer = make_tokenizer(kind, vocab_size, add_bos=add_bos)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# Benchmark workloads
# ---------------------------------------------------------------------------------------------------


def _count_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_text(tokenizer: PreTrainedTokenizerBase, n_tokens: int, rng: random.Random) -> str:
    """Random words (with the odd number and punctuation) that tokenize to about ``n_tokens``.

    Counts the text's own tokens (``add_special_tokens=False``: no bos/CLS/SEP). Usually exact; at
    worst a token or two short, when no filler word fits the remainder. Works with any tokenizer,
    not just the ones built here; costs O(log n) tokenizer calls.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if n_tokens == 0:
        return ""
    # Draw more words than can be needed (every word is at least one token), then binary-search the
    # longest prefix that fits: token count is monotone in the prefix length for word-split
    # tokenizers, and near enough for others.
    words: list[str] = []
    while len(words) < n_tokens + 8:
        words.extend(_sentence(rng).split())
    lo, hi = 0, len(words)  # search for the largest prefix length whose text fits in n_tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _count_tokens(tokenizer, " ".join(words[:mid])) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    kept = words[:lo]
    count = _count_tokens(tokenizer, " ".join(kept))
    # Top up with short words; a few tries per missing token is enough to land exactly most times.
    fillers = list(_WORDS[:200])
    for _ in range(4 * (n_tokens - count) + 8):
        if count >= n_tokens:
            break
        candidate = [*kept, rng.choice(fillers)]
        c = _count_tokens(tokenizer, " ".join(candidate))
        if c <= n_tokens:
            kept, count = candidate, c
    return " ".join(kept)


def lognormal_lengths(n: int, *, median: float, sigma: float, lo: int, hi: int, seed: int) -> list[int]:
    """``n`` lengths from a log-normal with the given median and log-space sigma, clipped to [lo, hi].

    Clipping (not resampling) piles the tail onto ``hi``, which is what truncation at a context limit
    does to real traffic. Deterministic in ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if median <= 0 or sigma < 0:
        raise ValueError(f"need median > 0 and sigma >= 0, got median={median}, sigma={sigma}")
    if not 0 <= lo <= hi:
        raise ValueError(f"need 0 <= lo <= hi, got lo={lo}, hi={hi}")
    rng = random.Random(seed)
    mu = math.log(median)
    return [min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))) for _ in range(n)]
