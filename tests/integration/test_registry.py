"""Several reward sources in one registry, on real tiny random-weight models, against plain transformers.

Every score is checked against an independently loaded model called the way a user would call it, at
1e-5 in fp32: models of three architectures, ensembles over them, composites, normalization, and
process reward models on each batch strategy.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from rewardserve.calibrate import calibrate
from rewardserve.config import Settings
from rewardserve.errors import ConfigError, InputError
from rewardserve.metrics import Metrics
from rewardserve.registry import Registry
from rewardserve.scoring.types import Message, ScoreInput, ScoreOptions
from rewardserve.sources.model import ModelSource

TOL = 1e-5
SEP = "<extra_0>"


def _inputs(seed: int, n: int) -> list[ScoreInput]:
    rng = random.Random(seed)
    words = [
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

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, k)))

    out = []
    for i in range(n):
        if i % 2:
            out.append(ScoreInput(messages=(Message("user", text(10)), Message("assistant", text(30)))))
        else:
            out.append(ScoreInput(prompt=text(15), response=text(40)))
    return out


def _reference(path: Path, inputs: list[ScoreInput]) -> list[float]:
    """model(**tokenizer(...)) through the model's chat template (or as a sentence pair without one)."""
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    out = []
    with torch.no_grad():
        for inp in inputs:
            msgs = (
                [{"role": m.role, "content": m.content} for m in inp.messages]
                if inp.messages
                else [{"role": "user", "content": inp.prompt}, {"role": "assistant", "content": inp.response}]
            )
            if tok.chat_template:
                enc = tok(
                    tok.apply_chat_template(msgs, tokenize=False),
                    add_special_tokens=False,
                    return_tensors="pt",
                )
            else:
                enc = tok(msgs[0]["content"], msgs[1]["content"], return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


def _step_reference(path: Path, inputs: list[ScoreInput]) -> list[list[float]]:
    """Plain transformers PRM use: steps joined with the separator, softmax at each separator."""
    model = AutoModelForTokenClassification.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    sep_id = tok.convert_tokens_to_ids(SEP)
    out = []
    with torch.no_grad():
        for inp in inputs:
            assert inp.steps is not None
            msgs = [
                {"role": "user", "content": inp.prompt},
                {"role": "assistant", "content": SEP.join(inp.steps) + SEP},
            ]
            ids = tok(
                tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False, return_tensors="pt"
            )
            logits = model(**ids).logits[0]
            at = ids["input_ids"][0] == sep_id
            out.append(logits[at].softmax(-1)[:, 1].tolist())
    return out


def _steps(seed: int, n: int) -> list[ScoreInput]:
    rng = random.Random(seed)
    words = ["two", "plus", "two", "is", "four", "so", "the", "answer", "must", "be", "right"]
    return [
        ScoreInput(
            prompt=" ".join(rng.choices(words, k=rng.randint(2, 8))),
            steps=tuple(" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 5))),
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_prms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rewardserve.testing.tiny_models import build_tiny_prm

    return {arch: build_tiny_prm(tmp_path_factory.mktemp(f"prm_{arch}"), arch) for arch in ("llama", "qwen2")}


@pytest.fixture
def three(tiny_llama: Path, tiny_qwen2: Path, tiny_bert: Path) -> dict[str, Path]:
    return {"llama": tiny_llama, "qwen2": tiny_qwen2, "bert": tiny_bert}


def _yaml(tmp_path: Path, text: str) -> Settings:
    f = tmp_path / "models.yaml"
    f.write_text(text)
    return Settings(config=f, device="cpu")


async def _registry(settings: Settings) -> Registry:
    reg = await Registry.from_settings(settings, metrics=Metrics())
    await reg.start()
    return reg


async def test_models_ensemble_composite_match_plain_forward(tmp_path: Path, three: dict[str, Path]) -> None:
    settings = _yaml(
        tmp_path,
        f"""
models:
  - {{name: llama, path: {three["llama"]}}}
  - {{name: qwen2, path: {three["qwen2"]}, batch_strategy: padded}}
  - {{name: bert, path: {three["bert"]}}}
ensembles:
  - {{name: ens, members: [llama, qwen2, bert], conservative_k: 0.5}}
composites:
  - {{name: blend, weights: {{llama: 1.0, bert: -0.5}}}}
""",
    )
    reg = await _registry(settings)
    try:
        inputs = _inputs(0, 12)
        ref = {name: _reference(path, inputs) for name, path in three.items()}
        for name in three:
            got = await reg.get(name).score(inputs, ScoreOptions())
            assert [r.score for r in got] == pytest.approx(ref[name], abs=TOL)
        ens = await reg.get("ens").score(inputs, ScoreOptions())
        cons = await reg.get("ens").score(inputs, ScoreOptions(reduce="conservative"))
        for i, r in enumerate(ens):
            members = [ref[n][i] for n in ("llama", "qwen2", "bert")]
            assert r.members == pytest.approx(
                dict(zip(("llama", "qwen2", "bert"), members, strict=True)), abs=TOL
            )
            assert r.score == pytest.approx(statistics.fmean(members), abs=TOL)
            assert r.std == pytest.approx(statistics.pstdev(members), abs=TOL)
            assert r.min == pytest.approx(min(members), abs=TOL)
            assert cons[i].score == pytest.approx(r.score - 0.5 * statistics.pstdev(members), abs=TOL)
        blend = await reg.get("blend").score(inputs, ScoreOptions())
        adhoc = await reg.resolve({"llama": 1.0, "bert": -0.5}).score(inputs, ScoreOptions())
        for i, (b, a) in enumerate(zip(blend, adhoc, strict=True)):
            assert b.score == pytest.approx(ref["llama"][i] - 0.5 * ref["bert"][i], abs=TOL)
            assert a.score == b.score and a.components == b.components
        assert reg.default.name == "llama"
    finally:
        await reg.close()


async def test_interleaved_concurrent_requests_never_cross(three: dict[str, Path]) -> None:
    settings = Settings(models=[f"{n}={p}" for n, p in three.items()], device="cpu")
    reg = await _registry(settings)
    try:
        inputs = _inputs(1, 16)
        ref = {name: _reference(path, inputs) for name, path in three.items()}
        rng = random.Random(7)
        calls = []
        for _ in range(48):
            name = rng.choice(list(three))
            idx = rng.sample(range(len(inputs)), rng.randint(1, 4))
            calls.append((name, idx))
        results = await asyncio.gather(
            *(reg.get(name).score([inputs[i] for i in idx], ScoreOptions()) for name, idx in calls)
        )
        for (name, idx), got in zip(calls, results, strict=True):
            assert [r.score for r in got] == pytest.approx([ref[name][i] for i in idx], abs=TOL), name
    finally:
        await reg.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
async def test_prm_every_strategy_matches_plain_forward(
    arch: str, tiny_prms: dict[str, Path], tmp_path: Path
) -> None:
    path = tiny_prms[arch]
    inputs = _steps(3, 10)
    ref = _step_reference(path, inputs)
    entries = "".join(
        f"  - {{name: {s}, path: {path}, batch_strategy: {s}}}\n" for s in ("packed", "padded", "sequential")
    )
    reg = await Registry.from_settings(_yaml(tmp_path, "models:\n" + entries), metrics=Metrics())
    try:
        await reg.start()
        for strategy in ("packed", "padded", "sequential"):
            source = reg.get(strategy)
            assert isinstance(source, ModelSource) and source.kind == "prm"
            card = source.card()
            assert (card["kind"], card["head"], card["batch_strategy"]) == ("prm", "prm", strategy)
            got = await source.score(inputs, ScoreOptions())
            for r, want in zip(got, ref, strict=True):
                assert r.step_scores is not None
                assert list(r.step_scores) == pytest.approx(want, abs=TOL)
                assert r.score == min(r.step_scores)
            last = await source.score(inputs, ScoreOptions(step_reduce="last"))
            assert [r.score for r in last] == [r.step_scores[-1] for r in got if r.step_scores]
    finally:
        await reg.close()


async def test_prm_input_shapes_and_errors(tiny_prms: dict[str, Path], tiny_llama: Path) -> None:
    reg = await _registry(Settings(models=[f"steps={tiny_prms['qwen2']}", f"orm={tiny_llama}"], device="cpu"))
    try:
        prm = reg.get("steps")
        by_steps = ScoreInput(prompt="what is two plus two", steps=("two plus two", "is four"))
        as_messages = ScoreInput(
            messages=(
                Message("user", "what is two plus two"),
                Message("assistant", "two plus two\n\nis four"),
            )
        )
        tagged = ScoreInput(prompt="what is two plus two", response=f"two plus two{SEP}is four{SEP}")
        as_response = ScoreInput(prompt="what is two plus two", response="two plus two\n\nis four")
        got = await prm.score([by_steps, as_messages, tagged, as_response], ScoreOptions(step_reduce="mean"))
        assert got[0].step_scores is not None and len(got[0].step_scores) == 2
        assert all(r.step_scores == got[0].step_scores for r in got)
        assert got[0].details()["step_scores"] == list(got[0].step_scores)
        bad = [
            (ScoreInput(prompt="q", steps=()), "steps is empty"),
            (ScoreInput(prompt="q", steps=("a", f"b{SEP}c")), r"steps\[1\] contains the step separator"),
            (ScoreInput(text="no tags here"), "no step separator"),
            (ScoreInput(messages=(Message("user", "q"),)), "last message must be the assistant"),
            (ScoreInput(prompt="q", steps=("word " * 600,)), "does not truncate"),
        ]
        for inp, message in bad:
            with pytest.raises(InputError, match=message):
                await prm.score([inp], ScoreOptions(truncate=True))
        with pytest.raises(InputError, match="steps are scored by process reward models"):
            await reg.get("orm").score([by_steps], ScoreOptions())
    finally:
        await reg.close()


async def test_start_up_errors_that_need_the_model(
    tmp_path: Path, tiny_prms: dict[str, Path], tiny_llama: Path, tiny_multi: Path
) -> None:
    cases = [
        (f"{{name: p, path: {tiny_prms['llama']}, step_separator: '<extra_9>'}}", "not one token"),
        (f"{{name: p, path: {tiny_llama}, kind: prm}}", "2-label token-classification head"),
        (f"{{name: m, path: {tiny_multi}, objective: style}}", "objective 'style'"),
    ]
    for entry, message in cases:
        with pytest.raises(ConfigError, match=message):
            await Registry.from_settings(
                _yaml(tmp_path, f"models:\n  - {{name: ok, path: {tiny_llama}}}\n  - {entry}\n"),
                metrics=Metrics(),
            )


async def test_normalization_from_calibration_and_config(
    tmp_path: Path, tiny_llama: Path, tiny_bert: Path
) -> None:
    data = tmp_path / "ref.jsonl"
    rows = [{"prompt": f"question {i}", "response": "answer " * (i + 1)} for i in range(6)]
    rows += [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo " * 3}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cal = calibrate(tiny_bert, data, tmp_path / "bert.json", settings=Settings(device="cpu"))
    inputs = [ScoreInput(prompt=r["prompt"], response=r["response"]) for r in rows[:6]]
    inputs.append(ScoreInput(messages=(Message("user", "hi"), Message("assistant", "yo " * 3))))
    raw = _reference(tiny_bert, inputs)
    assert cal["mean"] == pytest.approx(statistics.fmean(raw), abs=TOL)
    assert cal["std"] == pytest.approx(statistics.pstdev(raw), abs=TOL)
    assert json.loads((tmp_path / "bert.json").read_text())["count"] == 7
    # OpenRLHF's convention: mean/std in the model's config.json.
    llama = tmp_path / "llama_norm"
    shutil.copytree(tiny_llama, llama)
    cfg = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**cfg, "mean": 0.25, "std": 2.0}))
    reg = await _registry(
        _yaml(
            tmp_path,
            f"models:\n  - {{name: b, path: {tiny_bert}, normalize: bert.json}}\n"
            f"  - {{name: l, path: {llama}, normalize: true}}\n"
            "composites:\n  - {name: c, weights: {b: 1.0, l: 2.0}}\n",
        )
    )
    try:
        b = await reg.get("b").score(inputs, ScoreOptions())
        assert [r.raw for r in b] == pytest.approx(raw, abs=TOL)
        assert [r.score for r in b] == pytest.approx([(x - cal["mean"]) / cal["std"] for x in raw], abs=TOL)
        assert statistics.fmean(r.score for r in b if r.score is not None) == pytest.approx(0.0, abs=1e-5)
        l_raw = _reference(tiny_llama, inputs)
        c = await reg.get("c").score(inputs, ScoreOptions())
        for i, r in enumerate(c):
            want_l = (l_raw[i] - 0.25) / 2.0
            assert r.components == pytest.approx({"b": b[i].score, "l": want_l}, abs=TOL)
            assert r.score == pytest.approx(b[i].score + 2 * want_l, abs=TOL)
        assert reg.get("l").card()["normalize"] == {
            "mean": 0.25,
            "std": 2.0,
            "from": str(llama / "config.json"),
        }
    finally:
        await reg.close()


async def test_cards_report_kind_and_memory(three: dict[str, Path], tiny_prms: dict[str, Path]) -> None:
    settings = Settings(
        models=[*(f"{n}={p}" for n, p in three.items()), f"steps={tiny_prms['llama']}"], device="cpu"
    )
    reg = await _registry(settings)
    try:
        cards = {c["id"]: c for c in reg.cards()}
        assert list(cards) == [*three, "steps"]
        for name, path in three.items():
            model = AutoModelForSequenceClassification.from_pretrained(str(path))
            want = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
            assert cards[name]["memory_bytes"] == want
            assert cards[name]["kind"] == "model"
        assert cards["steps"]["kind"] == "prm" and cards["steps"]["memory_bytes"] > 0
        assert set(reg.scoring_services()) == set(cards)
    finally:
        await reg.close()
