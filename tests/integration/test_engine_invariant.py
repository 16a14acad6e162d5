"""The batching invariant: packed, padded and one-at-a-time scores equal a plain transformers forward.

Real (tiny, random-weight) models of each covered architecture; the reference is an independently
loaded model called the way a user would call it: ``model(**tokenizer(text))``.
"""

from __future__ import annotations

import itertools
import random
import zlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rewardserve.config import Settings
from rewardserve.errors import InputError
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.types import Encoded, Message, ScoreInput

ARCHS = ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_mistral", "tiny_bert"]
TOL = 1e-5


def _words(rng: random.Random, n: int) -> str:
    vocab = [
        "the",
        "reward",
        "model",
        "reads",
        "each",
        "answer",
        "and",
        "gives",
        "a",
        "number",
        "that",
        "says",
        "how",
        "good",
        "it",
        "was",
    ]
    return " ".join(rng.choice(vocab) for _ in range(n))


def _inputs(rng: random.Random, n: int) -> list[ScoreInput]:
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(
                ScoreInput(prompt=_words(rng, rng.randint(1, 30)), response=_words(rng, rng.randint(1, 60)))
            )
        elif kind == 1:
            msgs = (
                Message("user", _words(rng, rng.randint(1, 20))),
                Message("assistant", _words(rng, rng.randint(1, 40))),
                Message("user", _words(rng, rng.randint(1, 10))),
                Message("assistant", _words(rng, rng.randint(1, 30))),
            )
            out.append(ScoreInput(messages=msgs))
        else:
            out.append(ScoreInput(text=_words(rng, rng.randint(1, 80))))
    return out


def _reference(path: Path, engine: RewardEngine, inputs: list[ScoreInput]) -> list[list[float]]:
    """What a user gets from plain transformers for the same inputs."""
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    out = []
    with torch.no_grad():
        for inp in inputs:
            if tok.chat_template:
                if inp.text is not None:
                    text = inp.text
                else:
                    msgs = (
                        [{"role": m.role, "content": m.content} for m in inp.messages]
                        if inp.messages
                        else [
                            {"role": "user", "content": inp.prompt},
                            {"role": "assistant", "content": inp.response},
                        ]
                    )
                    text = tok.apply_chat_template(msgs, tokenize=False)
                enc = tok(text, add_special_tokens=False, return_tensors="pt")
            elif inp.text is not None:
                enc = tok(inp.text, return_tensors="pt")
            elif inp.messages is not None:
                ctx = "\n".join(m.content for m in inp.messages[:-1])
                enc = tok(ctx, inp.messages[-1].content, return_tensors="pt")
            else:
                enc = tok(inp.prompt, inp.response, return_tensors="pt")
            out.append(model(**enc).logits[0].float().tolist())
    return out


def _load(path: Path, strategy: str, fused: bool = True) -> RewardEngine:
    settings = Settings(model=path, batch_strategy=strategy, fused_cpu=fused)  # type: ignore[arg-type]
    return RewardEngine.load(path, settings)


def _run_in_random_batches(engine: RewardEngine, enc: list[Encoded], rng: random.Random) -> list[list[float]]:
    order = list(range(len(enc)))
    rng.shuffle(order)
    got: dict[int, list[float]] = {}
    i = 0
    while i < len(order):
        size = rng.randint(1, 7)
        idx = order[i : i + size]
        outs = engine.run(engine.prepare([enc[j] for j in idx]))
        for j, o in zip(idx, outs, strict=True):
            got[j] = list(o.values)
        i += size
    return [got[j] for j in range(len(enc))]


@pytest.mark.parametrize("arch", ARCHS)
def test_all_strategies_match_plain_forward(arch: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(arch)
    rng = random.Random(zlib.crc32(arch.encode()))  # stable across processes, unlike hash()
    inputs = _inputs(rng, 24)
    results = {}
    # Decoders run each strategy twice: through the fused CPU forward and through transformers' modules.
    for strategy, fused in itertools.product(("packed", "padded", "sequential"), (True, False)):
        engine = _load(path, strategy, fused)
        if arch == "tiny_bert" and strategy == "packed":
            assert engine.strategy == "padded"  # bidirectional encoders are never packed
        else:
            assert engine.strategy == strategy
        want_fused = fused and arch != "tiny_bert"
        assert (engine.fused is not None) == want_fused, engine.info.kernels
        assert engine.info.kernels.startswith("fused") == want_fused
        enc = [engine.encode(x, truncate=False) for x in inputs]
        results[f"{strategy} {engine.info.kernels}"] = _run_in_random_batches(engine, enc, rng)
    ref = _reference(path, engine, inputs)
    spread = max(abs(r[0]) for r in ref) - min(abs(r[0]) for r in ref)
    assert spread > 1e-3, "rewards are all alike: the test would not catch a mix-up"
    for strategy, got in results.items():
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            assert g == pytest.approx(r, abs=TOL), f"{arch} {strategy} input {i}"


def test_multi_objective_head(tiny_multi: Path) -> None:
    engine = _load(tiny_multi, "packed")
    assert engine.info.head == "multi_objective"
    assert engine.info.objectives == ("helpfulness", "correctness", "safety")
    inp = ScoreInput(prompt="hi", response="hello there")
    out = engine.run(engine.prepare([engine.encode(inp, truncate=False)]))[0]
    assert len(out.values) == 3
    assert out.score == pytest.approx(sum(out.values) / 3)
    ref = _reference(tiny_multi, engine, [inp])[0]
    assert list(out.values) == pytest.approx(ref, abs=TOL)


def test_named_objective_is_the_score(tiny_multi: Path) -> None:
    engine = RewardEngine.load(tiny_multi, Settings(model=tiny_multi, objective="safety"))
    out = engine.run(engine.prepare([engine.encode(ScoreInput(text="a b c"), truncate=False)]))[0]
    assert out.score == out.values[2]
    with pytest.raises(ValueError, match="not one of"):
        RewardEngine.load(tiny_multi, Settings(model=tiny_multi, objective="nope"))


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_bert"])
def test_too_long_is_refused_unless_truncated(arch: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(arch)
    engine = RewardEngine.load(path, Settings(model=path, max_input_tokens=32))
    long = ScoreInput(prompt="tell me a story", response=" ".join(["word"] * 200))
    with pytest.raises(InputError, match="limit of 32"):
        engine.encode(long, truncate=False)
    enc = engine.encode(long, truncate=True)
    assert enc.truncated and enc.n_tokens == 32
    out = engine.run(engine.prepare([enc]))[0]
    assert out.truncated and out.tokens == 32
    short = engine.encode(ScoreInput(prompt="hi", response="ok"), truncate=True)
    assert not short.truncated


def test_chat_template_is_applied_without_extra_special_tokens(tiny_llama: Path) -> None:
    engine = _load(tiny_llama, "sequential")
    tok = engine.tokenizer
    enc = engine.encode(ScoreInput(prompt="2+2?", response="4"), truncate=False)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], tokenize=False
    )
    assert enc.input_ids == tok(rendered, add_special_tokens=False)["input_ids"]
    # the rendered text carries bos once: the engine did not add a second one
    assert enc.input_ids.count(tok.bos_token_id) == 1


def test_only_safetensors_are_loaded(tmp_path: Path, tiny_llama: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors"):
        RewardEngine.load(tmp_path, Settings(model=tmp_path))


def test_torch_compile_gives_the_same_scores(tiny_llama: Path) -> None:
    eager = _load(tiny_llama, "sequential", fused=False)
    compiled = RewardEngine.load(tiny_llama, Settings(model=tiny_llama, torch_compile=True, fused_cpu=False))
    assert compiled._base is not eager._base and type(compiled._base).__name__ == "OptimizedModule"
    rng = random.Random(5)
    inputs = _inputs(rng, 9)
    enc = [eager.encode(x, truncate=False) for x in inputs]
    want = [o.score for o in eager.run(eager.prepare(enc))]
    got = [o.score for o in compiled.run(compiled.prepare(enc))]
    assert got == pytest.approx(want, abs=TOL)
