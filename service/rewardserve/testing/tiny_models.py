"""Tiny random-weight models and tokenizers, built fully offline, for tests and benchmarks.

Nothing here touches the network: tokenizers are trained with the ``tokenizers`` library on a corpus
generated in code, and models are initialised from a config with a fixed seed. The same arguments give
the same files, byte for byte in the weights and id for id in the tokenizer, on every run.

Tokenizers (and benchmark text helpers) live in ``tiny_tokenizers``; this module re-exports them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal

import torch
from tokenizers import AddedToken
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GenerationConfig,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from rewardserve.testing.tiny_tokenizers import (
    BPE_SPECIAL_TOKENS,
    CHAT_TEMPLATE,
    WORDPIECE_SPECIAL_TOKENS,
    TokenizerKind,
    build_tokenizer,
    lognormal_lengths,
    make_text,
    make_tokenizer,
)

# transformers 5 ships py.typed but leaves constructors and from_config unannotated, so strict mypy
# flags those few calls; they carry a targeted ignore rather than typing the whole module as Any.

__all__ = [
    "BPE_SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "DECODER_ARCHS",
    "DEFAULT_INITIALIZER_RANGE",
    "WORDPIECE_SPECIAL_TOKENS",
    "Arch",
    "TokenizerKind",
    "build_bench_reward_model",
    "build_tiny_causal_lm",
    "build_tiny_prm",
    "build_tiny_reward_model",
    "build_tokenizer",
    "lognormal_lengths",
    "make_text",
]

Arch = Literal["llama", "qwen2", "qwen3", "mistral", "bert"]
DECODER_ARCHS: Final[tuple[Arch, ...]] = ("llama", "qwen2", "qwen3", "mistral")

# Weight-init std per arch. The HF default (0.02) leaves a 2-layer model's residual stream dominated
# by the last token's embedding, so rewards are ~0.1 and texts ending alike score alike (bert's tanh
# pooler gives near-constant ~0.02). Larger values let attention and MLP outputs outweigh the
# embedding, so context matters. Measured on 200 corpus lines at hidden 64: decoders at 0.1 give
# rewards with std ~0.8 (0.2 gives ~1.5); bert at 0.2 gives std ~0.5 (0.1 gives ~0.05).
DEFAULT_INITIALIZER_RANGE: Final[dict[Arch, float]] = {
    "llama": 0.1,
    "qwen2": 0.1,
    "qwen3": 0.1,
    "mistral": 0.1,
    "bert": 0.2,
}

# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the block and restore it afterwards, so building a model inside a test
    neither depends on nor disturbs the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _decoder_config_kwargs(
    arch: Arch,
    *,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int | None,
    intermediate_size: int,
    max_position_embeddings: int,
    initializer_range: float,
) -> dict[str, Any]:
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if head_dim is None:
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) is not divisible by num_heads ({num_heads})")
        # Explicit, because Qwen3's default head_dim is 128 whatever hidden_size is.
        head_dim = hidden_size // num_heads
    kwargs: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": initializer_range,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    if arch == "mistral":
        # Mistral defaults to a 4096-token sliding window; off, so every arch attends the same way.
        kwargs["sliding_window"] = None
    return kwargs


def _bert_config_kwargs(
    *,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    initializer_range: float,
) -> dict[str, Any]:
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size ({hidden_size}) is not divisible by num_heads ({num_heads})")
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "type_vocab_size": 2,
        "initializer_range": initializer_range,
        "pad_token_id": tokenizer.pad_token_id,
    }


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers 5 draws a "Writing model shards" bar for every save; builds happen by the dozen
    in test sessions and benchmark setup, so hide it, then restore whatever the caller had."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _save_model(model: Any, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers 5 always writes safetensors (the safe_serialization flag is gone).
    with _no_progress_bars():
        model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_reward_model(
    out_dir: Path,
    arch: Arch,
    *,
    num_labels: int = 1,
    id2label: dict[int, str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    vocab_size: int = 1000,
    initializer_range: float | None = None,
) -> Path:
    """Build a random-weight ``*ForSequenceClassification`` reward model plus tokenizer in ``out_dir``.

    Decoder archs get the bpe tokenizer (with chat template) and GQA when ``num_kv_heads <
    num_heads``; bert gets wordpiece and ignores ``num_kv_heads``/``head_dim``. Weights are float32
    safetensors; the config names ``pad_token_id`` (the head needs it to find each row's last token)
    and no attention implementation, so a plain ``from_pretrained(out_dir)`` picks sdpa on CPU.
    ``problem_type`` is "regression": each label is a raw scalar reward, not a class logit.

    ``initializer_range`` defaults per arch (``DEFAULT_INITIALIZER_RANGE``) so rewards are O(0.1-1)
    and depend on the whole text. ``vocab_size`` is the tokenizer trainer's target (see
    ``build_tokenizer``); the config's vocab_size is the trained tokenizer's length. llama and
    mistral with the same seed get identical weights (same shapes, same init order). Returns
    ``out_dir``.
    """
    if arch not in DEFAULT_INITIALIZER_RANGE:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(DEFAULT_INITIALIZER_RANGE)}")
    if id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    elif sorted(id2label) != list(range(num_labels)):
        raise ValueError(
            f"id2label keys must be 0..{num_labels - 1} (num_labels={num_labels}), got {id2label}"
        )
    if initializer_range is None:
        initializer_range = DEFAULT_INITIALIZER_RANGE[arch]
    kind: TokenizerKind = "wordpiece" if arch == "bert" else "bpe"
    tokenizer = make_tokenizer(kind, vocab_size, model_max_length=max_position_embeddings)
    if arch == "bert":
        cfg_kwargs = _bert_config_kwargs(
            tokenizer=tokenizer,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            initializer_range=initializer_range,
        )
    else:
        cfg_kwargs = _decoder_config_kwargs(
            arch,
            tokenizer=tokenizer,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            initializer_range=initializer_range,
        )
    config = AutoConfig.for_model(
        arch,
        num_labels=num_labels,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
        # Reward heads are regressors (one scalar per label), never softmax classifiers.
        problem_type="regression",
        **cfg_kwargs,
    )
    with _seeded(seed):
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.eval()
    return _save_model(model, tokenizer, out_dir)


def build_tiny_causal_lm(
    out_dir: Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 2,
    head_dim: int = 64,
    intermediate_size: int = 256,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    vocab_size: int = 1000,
) -> Path:
    """Build a random-weight ``LlamaForCausalLM`` policy for generation (vLLM) tests in ``out_dir``.

    head_dim stays 64 by default: vLLM's CPU attention backend rejects small head sizes such as 16.
    Saved as float32 safetensors with the bpe tokenizer, its chat template and a
    ``generation_config.json`` naming bos/eos/pad. Default HF init (0.02): near-uniform logits, so
    greedy decoding is deterministic and sampling rarely hits eos early. Returns ``out_dir``.
    """
    tokenizer = make_tokenizer("bpe", vocab_size, model_max_length=max_position_embeddings)
    cfg_kwargs = _decoder_config_kwargs(
        "llama",
        tokenizer=tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.02,
    )
    config = AutoConfig.for_model("llama", **cfg_kwargs)
    with _seeded(seed):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.eval()
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_model(model, tokenizer, out_dir)


def build_bench_reward_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Llama reward model sized for benchmarks: 4 layers, hidden 256, 4 heads x 64 (no GQA),
    MLP 1024, 2048 positions; ~5M parameters, so batching costs show up on CPU."""
    return build_tiny_reward_model(
        out_dir,
        "llama",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=1024,
        max_position_embeddings=2048,
        seed=seed,
        vocab_size=4096,
        # Keeps rewards O(1) at hidden 256 (score std ~ r * sqrt(hidden)).
        initializer_range=0.1,
    )


def build_tiny_prm(
    out_dir: Path,
    arch: Arch = "qwen2",
    *,
    separator: str = "<extra_0>",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    vocab_size: int = 1000,
) -> Path:
    """Build a random-weight process reward model: a decoder ``*ForTokenClassification`` with 2 labels
    (Qwen2.5-Math-PRM's layout: label 1 = the step is good), the bpe tokenizer with its chat template,
    and ``separator`` added as one special token (appended, so every other id is as in
    ``build_tiny_reward_model``). Returns ``out_dir``."""
    if arch == "bert":
        raise ValueError("build_tiny_prm builds decoders; bert has no chat template to put steps in")
    tokenizer = make_tokenizer("bpe", vocab_size, model_max_length=max_position_embeddings)
    tokenizer.add_tokens([AddedToken(separator, special=True, normalized=False)], special_tokens=True)
    cfg_kwargs = _decoder_config_kwargs(
        arch,
        tokenizer=tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=None,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        initializer_range=DEFAULT_INITIALIZER_RANGE[arch],
    )
    config = AutoConfig.for_model(
        arch, num_labels=2, id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1}, **cfg_kwargs
    )
    with _seeded(seed):
        model = AutoModelForTokenClassification.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.eval()
    return _save_model(model, tokenizer, out_dir)
