"""The offline tiny models and tokenizers that other tests and the benchmarks build on."""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rewardserve.testing.tiny_models import (
    CHAT_TEMPLATE,
    Arch,
    build_bench_reward_model,
    build_tiny_reward_model,
    build_tokenizer,
    lognormal_lengths,
    make_text,
)

DECODERS = ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_mistral"]
REWARD_MODELS = [*DECODERS, "tiny_bert", "tiny_multi"]
EXPECTED_CLASS = {
    "tiny_llama": "LlamaForSequenceClassification",
    "tiny_qwen2": "Qwen2ForSequenceClassification",
    "tiny_qwen3": "Qwen3ForSequenceClassification",
    "tiny_mistral": "MistralForSequenceClassification",
    "tiny_bert": "BertForSequenceClassification",
    "tiny_multi": "LlamaForSequenceClassification",
}
# Pairs that share their last token on purpose: a model whose reward only reads the last token's
# embedding would score them alike.
TEXTS = [
    "The cat sat on the mat.",
    "The dog sat on the mat.",
    "Question: why is the sky blue? Answer: light scatters off the air.",
    "I like it.",
    "In 1999, 42% of people said no.",
]
# Awkward inputs for round trips: accents, CJK, emoji, runs of whitespace, tabs, newlines, specials
# written as text.
ODD_TEXTS = [
    "naïve café, 日本語 🙂",
    "  leading and trailing  ",
    "tabs\tand\nnew\n\nlines\r\n",
    "don't I'll we're 3.14159 1,234,567",
    "<|user|>literal markers<|eos|>",
]


# transformers' own annotations are looser than its behaviour (unions of str | list | BatchEncoding),
# so loaded objects are handled as Any here.
def _tokenizer(path: Path) -> Any:
    return AutoTokenizer.from_pretrained(path)


def _model(path: Path) -> Any:
    return AutoModelForSequenceClassification.from_pretrained(path)


def _load(path: Path) -> tuple[Any, Any]:
    return _model(path), _tokenizer(path)


def _reward(model: Any, tokenizer: Any, text: str) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(**tokenizer(text, return_tensors="pt")).logits
    return logits[0]


# --- loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REWARD_MODELS)
def test_reward_model_loads_back_offline(name: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(name)
    model, tokenizer = _load(path)
    assert type(model).__name__ == EXPECTED_CLASS[name]
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin"))
    assert model.dtype == torch.float32
    assert not model.training
    # The head finds each row's last real token through pad_token_id; it must match the tokenizer's.
    assert model.config.pad_token_id is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.problem_type == "regression"
    assert tokenizer.model_max_length == model.config.max_position_embeddings


@pytest.mark.parametrize("name", DECODERS)
def test_decoders_use_gqa(name: str, request: pytest.FixtureRequest) -> None:
    config = _model(request.getfixturevalue(name)).config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    assert config.pad_token_id not in (config.eos_token_id, config.bos_token_id)


@pytest.mark.parametrize("name", DECODERS)
def test_auto_tokenizer_ids_match_the_trained_tokenizer(name: str, request: pytest.FixtureRequest) -> None:
    # transformers 5 rebuilds qwen2 tokenizers as Qwen2Tokenizer whatever tokenizer_config says; the
    # bpe pipeline copies Qwen2's so the ids stay those of tokenizer.json, and no stray unk token
    # is appended past the embedding table.
    path: Path = request.getfixturevalue(name)
    tokenizer = _tokenizer(path)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in [*TEXTS, *ODD_TEXTS, "<|endoftext|>"]:
        assert tokenizer(text)["input_ids"] == raw.encode(text).ids, text
    assert tokenizer.unk_token is None
    assert max(tokenizer.get_vocab().values()) < len(tokenizer)


# --- tokenizers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DECODERS)
def test_bpe_round_trips_any_text(name: str, request: pytest.FixtureRequest) -> None:
    tokenizer = _tokenizer(request.getfixturevalue(name))
    for text in [*TEXTS, *ODD_TEXTS]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_bpe_adds_no_special_tokens(tiny_llama: Path) -> None:
    tokenizer = _tokenizer(tiny_llama)
    ids = tokenizer("The cat sat.")["input_ids"]
    assert ids == tokenizer("The cat sat.", add_special_tokens=False)["input_ids"]
    assert tokenizer.bos_token_id not in ids
    assert tokenizer.eos_token_id not in ids
    assert "token_type_ids" not in tokenizer("x")


def test_bpe_add_bos_variant_prepends_bos(tmp_path: Path) -> None:
    build_tokenizer(tmp_path, kind="bpe", add_bos=True)
    tokenizer = _tokenizer(tmp_path)
    plain = tokenizer("The cat sat.", add_special_tokens=False)["input_ids"]
    assert tokenizer("The cat sat.")["input_ids"] == [tokenizer.bos_token_id, *plain]


def test_chat_template_renders_as_documented(tiny_llama: Path) -> None:
    tokenizer = _tokenizer(tiny_llama)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|bos|><|system|>Be brief.<|eos|><|user|>Hi there<|eos|><|assistant|>Hello!<|eos|>"
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|system|>Be brief.<|eos|><|user|>Hi there<|eos|><|assistant|>"
    # Tokenizing the rendered chat with the defaults gives exactly one bos, and the markers are
    # single special tokens.
    ids = tokenizer(rendered)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(tokenizer.eos_token_id) == 3
    for marker in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert ids.count(tokenizer.convert_tokens_to_ids(marker)) == 1
    # transformers 5: apply_chat_template(tokenize=True) returns a BatchEncoding, not a list.
    assert tokenizer.apply_chat_template(messages)["input_ids"] == ids


def test_wordpiece_is_bert_style(tiny_bert: Path) -> None:
    tokenizer = _tokenizer(tiny_bert)
    assert tokenizer.chat_template is None
    assert tokenizer.pad_token_id == 0
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    single = tokenizer("The cat sat")
    assert single["input_ids"][0] == cls and single["input_ids"][-1] == sep
    assert single["token_type_ids"] == [0] * len(single["input_ids"])
    pair = tokenizer("the cat", "sat down")
    a = tokenizer("the cat", add_special_tokens=False)["input_ids"]
    b = tokenizer("sat down", add_special_tokens=False)["input_ids"]
    assert pair["input_ids"] == [cls, *a, sep, *b, sep]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    # Lowercasing normalizer, and no [UNK] for ASCII symbols the corpus never had.
    assert tokenizer("HELLO World")["input_ids"] == tokenizer("hello world")["input_ids"]
    assert tokenizer.unk_token_id not in tokenizer("{x} # ~ ^ | @ \\ `")["input_ids"]
    ids = tokenizer("the cat sat on the mat, 42 times.")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the cat sat on the mat, 42 times."


# --- rewards ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REWARD_MODELS)
def test_rewards_are_finite_sizeable_and_differ(name: str, request: pytest.FixtureRequest) -> None:
    model, tokenizer = _load(request.getfixturevalue(name))
    rewards = torch.stack([_reward(model, tokenizer, text) for text in TEXTS])
    assert rewards.shape == (len(TEXTS), model.config.num_labels)
    assert torch.isfinite(rewards).all()
    assert (rewards.abs() > 1e-3).all(), rewards
    assert rewards.abs().max() > 0.05, rewards
    for i, j in itertools.combinations(range(len(TEXTS)), 2):
        assert (rewards[i] - rewards[j]).abs().max() > 1e-3, (TEXTS[i], TEXTS[j], rewards)
    # A padded batch scores like the texts one by one: pad_token_id is wired through.
    with torch.no_grad():
        batch = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits
    torch.testing.assert_close(batch, rewards, atol=1e-4, rtol=1e-4)


def test_multi_label_model(tiny_multi: Path) -> None:
    model, tokenizer = _load(tiny_multi)
    assert model.config.id2label == {0: "helpfulness", 1: "correctness", 2: "safety"}
    assert model.config.label2id == {"helpfulness": 0, "correctness": 1, "safety": 2}
    reward = _reward(model, tokenizer, TEXTS[0])
    assert reward.shape == (3,)
    assert len(set(reward.tolist())) == 3


def test_llama_and_mistral_share_weights_for_a_seed(tiny_llama: Path, tiny_mistral: Path) -> None:
    # Documented, so nobody reads two equal scores as a bug: same shapes, same seed, same weights.
    llama, tokenizer = _load(tiny_llama)
    mistral, _ = _load(tiny_mistral)
    torch.testing.assert_close(_reward(llama, tokenizer, TEXTS[0]), _reward(mistral, tokenizer, TEXTS[0]))


# --- policy and bench models ------------------------------------------------------------------------


def test_causal_lm_policy(tiny_policy: Path) -> None:
    model: Any = AutoModelForCausalLM.from_pretrained(tiny_policy)
    tokenizer = _tokenizer(tiny_policy)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.head_dim == 64  # vLLM's CPU attention rejects 16
    assert (tiny_policy / "generation_config.json").is_file()
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.chat_template == CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 4)


def test_bench_reward_model(tmp_path: Path) -> None:
    model, tokenizer = _load(build_bench_reward_model(tmp_path))
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (
        4,
        256,
        4,
        4,
    )
    assert (c.head_dim, c.intermediate_size, c.max_position_embeddings) == (64, 1024, 2048)
    assert len(tokenizer) == c.vocab_size >= 2000
    rewards = [_reward(model, tokenizer, text).item() for text in TEXTS[:3]]
    assert all(math.isfinite(r) and abs(r) > 1e-3 for r in rewards)
    assert len(set(rewards)) == 3


# --- determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_same_seed_same_files(arch: Arch, tmp_path: Path) -> None:
    a = build_tiny_reward_model(tmp_path / "a", arch, seed=3)
    b = build_tiny_reward_model(tmp_path / "b", arch, seed=3)
    c = build_tiny_reward_model(tmp_path / "c", arch, seed=4)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_building_does_not_touch_the_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_reward_model(tmp_path, "llama", seed=0)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.slow
def test_tokenizers_are_identical_in_a_fresh_process(tmp_path: Path) -> None:
    # tokenizers' Rust trainers use per-process hash seeds; a cached in-process build would hide
    # any nondeterminism, so build again in a new interpreter and compare bytes.
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from rewardserve.testing.tiny_models import build_tokenizer
        out = Path(sys.argv[1])
        build_tokenizer(out / "bpe", kind="bpe")
        build_tokenizer(out / "wordpiece", kind="wordpiece")
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "child")], check=True, timeout=120)
    for kind in ("bpe", "wordpiece"):
        build_tokenizer(tmp_path / "here" / kind, kind=kind)
        here = (tmp_path / "here" / kind / "tokenizer.json").read_bytes()
        assert here == (tmp_path / "child" / kind / "tokenizer.json").read_bytes(), kind


# --- workloads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_bert"])
def test_make_text_hits_the_token_count(name: str, request: pytest.FixtureRequest) -> None:
    tokenizer = _tokenizer(request.getfixturevalue(name))
    for n in (1, 7, 64, 500, 2048):
        text = make_text(tokenizer, n, random.Random(n))
        got = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert abs(got - n) <= max(1, n // 50), (n, got)
    assert make_text(tokenizer, 100, random.Random(1)) == make_text(tokenizer, 100, random.Random(1))
    assert make_text(tokenizer, 100, random.Random(1)) != make_text(tokenizer, 100, random.Random(2))
    assert make_text(tokenizer, 0, random.Random(0)) == ""


def test_lognormal_lengths() -> None:
    lengths = lognormal_lengths(2001, median=300, sigma=0.8, lo=16, hi=2048, seed=7)
    assert lengths == lognormal_lengths(2001, median=300, sigma=0.8, lo=16, hi=2048, seed=7)
    assert lengths != lognormal_lengths(2001, median=300, sigma=0.8, lo=16, hi=2048, seed=8)
    assert all(16 <= n <= 2048 for n in lengths)
    assert 270 <= sorted(lengths)[1000] <= 330
    assert lognormal_lengths(50, median=1000, sigma=2.0, lo=1, hi=64, seed=0).count(64) > 25
    with pytest.raises(ValueError):
        lognormal_lengths(5, median=0, sigma=1, lo=1, hi=2, seed=0)
    with pytest.raises(ValueError):
        lognormal_lengths(5, median=10, sigma=1, lo=3, hi=2, seed=0)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch"):
        build_tiny_reward_model(tmp_path, "gpt2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="id2label"):
        build_tiny_reward_model(tmp_path, "llama", num_labels=2, id2label={0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="num_kv_heads"):
        build_tiny_reward_model(tmp_path, "llama", num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="add_bos"):
        build_tokenizer(tmp_path, kind="wordpiece", add_bos=True)
    with pytest.raises(ValueError, match="n_tokens"):
        make_text(build_tokenizer(tmp_path / "tok"), -1, random.Random(0))
