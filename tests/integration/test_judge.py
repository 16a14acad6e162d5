"""LLM judges on a real vLLM engine (CPU) with a tiny random-weight model: the choice-token
expectation equals a plain transformers forward of the same prompt."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from rewardserve.config import Settings
from rewardserve.errors import ConfigError
from rewardserve.generation.judge import JudgeConfig, JudgeSource, choice_token_ids, template_variables
from rewardserve.generation.service import GenerationService, start_generation
from rewardserve.metrics import Metrics
from rewardserve.scoring.types import Message, ScoreInput, ScoreOptions

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]

TEMPLATE = "Rate the answer from 1 to 5.\nQuestion: {{ prompt }}\nAnswer: {{ response }}\nRating:"
CHOICES = {"1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0, "5": 5.0}
PAIR_TEMPLATE = "Question: {{ prompt }}\nA: {{ a }}\nB: {{ b }}\nWhich is better, A or B?"
INPUTS = [
    ScoreInput(prompt="what is two plus two", response="four"),
    ScoreInput(prompt="the capital of France", response="Paris is the capital"),
    ScoreInput(messages=(Message("user", "hello there"), Message("assistant", "hi, how can I help"))),
    ScoreInput(prompt="sum", response="\\boxed{3}", label="3"),
]


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy with a sharpened output layer: HF's 0.02 init gives near-uniform next-token
    distributions, under which any averaging of the choices would look right."""
    from transformers import AutoModelForCausalLM

    from rewardserve.testing.tiny_models import build_tiny_causal_lm

    path = build_tiny_causal_lm(tmp_path_factory.mktemp("judge_model"), seed=3)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(60.0)
    model.save_pretrained(path)
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def generation(judge_model: Path) -> AsyncIterator[GenerationService]:
    settings = Settings(
        generator=judge_model,
        generator_dtype="float32",
        generator_max_model_len=512,
        generator_kv_cache_bytes=64 * 2**20,
    )
    service = await start_generation(settings, Metrics())
    try:
        yield service
    finally:
        await service.close()


def _reference(model_dir: Path, ids: list[int], choice_ids: list[int], values: list[float]) -> float:
    """sum v_i softmax(logits[choice_ids])_i from a plain transformers forward of ``ids``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    probs = torch.softmax(logits[choice_ids], dim=0)
    return float((probs * torch.tensor(values, dtype=torch.float64)).sum())


async def test_choices_equal_the_transformers_expectation(
    generation: GenerationService, judge_model: Path
) -> None:
    metrics = Metrics()
    cfg = JudgeConfig(name="judge", engine="generator", template=TEMPLATE, choices=CHOICES)
    judge = JudgeSource(cfg, generation, metrics=metrics)
    await judge.start()
    assert judge.card()["kind"] == "judge" and judge.card()["mode"] == "choices"
    results = await judge.score(INPUTS, ScoreOptions())
    choice_ids = [t for t, _ in judge.choice_tokens]
    assert choice_ids == [judge.tokenizer.convert_tokens_to_ids(c) for c in CHOICES]
    scores = []
    for inp, result in zip(INPUTS, results, strict=True):
        assert result.status == "ok" and result.score is not None

        ids = judge.render({**template_variables(inp), "label": inp.label, "metadata": None})
        # The prompt the judge reads: the chat template around the rendered user turn.
        text = judge.tokenizer.decode(ids)
        assert "<|user|>Rate the answer from 1 to 5." in text and text.endswith("<|assistant|>")
        expected = _reference(judge_model, ids, choice_ids, list(CHOICES.values()))
        assert result.score == pytest.approx(expected, abs=1e-4)
        assert result.extras is not None and math.fsum(result.extras["probs"].values()) == pytest.approx(1.0)
        scores.append(result.score)
    # The sharpened model is far from uniform: the scores differ from the plain mean (3) and each other.
    assert max(abs(s - 3.0) for s in scores) > 0.2
    assert 'rewardserve_reward_results_total{model="judge",status="ok"} 4.0' in metrics.render().decode()


async def test_pairwise_choices(generation: GenerationService, judge_model: Path) -> None:
    cfg = JudgeConfig(
        name="pair", engine="generator", template=PAIR_TEMPLATE, choices={"A": 1.0, "B": 0.0}, pairwise=True
    )
    judge = JudgeSource(cfg, generation)
    await judge.start()
    pairs = [(INPUTS[0], ScoreInput(prompt="what is two plus two", response="five"))]
    (result,) = await judge.compare(pairs, ScoreOptions())
    ids = judge.render(
        {"prompt": "what is two plus two", "a": "four", "b": "five", "label": None, "metadata": None}
    )
    choice_ids = [t for t, _ in judge.choice_tokens]
    assert result.score == pytest.approx(_reference(judge_model, ids, choice_ids, [1.0, 0.0]), abs=1e-4)
    # /v1/compare's path (sources.base.compare) hands the pairs to the pairwise judge whole.
    from rewardserve.sources.base import compare

    (pair,) = await compare(judge, pairs, ScoreOptions())
    assert pair.probability == pytest.approx(result.score, abs=1e-6) == pair.margin
    from rewardserve.errors import InputError

    with pytest.raises(InputError, match="pairwise"):
        await judge.score(INPUTS[:1], ScoreOptions())


async def test_pattern_mode(generation: GenerationService, judge_model: Path) -> None:
    """Greedy text through the pattern: the random model writes no rating, so parse_failed; the
    judgement is the same greedy text transformers produces."""
    from transformers import AutoModelForCausalLM

    cfg = JudgeConfig(
        name="rated", engine="generator", template=TEMPLATE, pattern=r"Rating:\s*(\d+)", max_tokens=8
    )
    judge = JudgeSource(cfg, generation)
    await judge.start()
    (result,) = await judge.score(INPUTS[:1], ScoreOptions())
    assert result.status == "parse_failed" and result.score is None and result.mask
    ids = judge.render(
        {"prompt": "what is two plus two", "response": "four", "label": None, "metadata": None}
    )
    model = AutoModelForCausalLM.from_pretrained(judge_model, dtype=torch.float32).eval()
    out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    expected = judge.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert result.extras is not None and result.extras["judgement"] == expected
    # A conversation that does not end with the response is that input's error only.
    bad, good = await judge.score([ScoreInput(messages=(Message("user", "hi"),)), INPUTS[0]], ScoreOptions())
    assert bad.status == "error" and "assistant" in (bad.error or "") and good.status == "parse_failed"


async def test_multi_token_choice_is_refused_at_start(generation: GenerationService) -> None:
    judge = JudgeSource(
        JudgeConfig(name="j", engine="generator", template=TEMPLATE, choices={"yes": 1.0, "no": 0.0}),
        generation,
    )
    with pytest.raises(ConfigError, match="choice 'yes' is 2 tokens"):
        await judge.start()
    ids = [judge.tokenizer.convert_tokens_to_ids(c) for c in "AB"]
    assert choice_token_ids("j", judge.tokenizer, {"A": 1.0, "B": 0.0}) == [(ids[0], 1.0), (ids[1], 0.0)]


async def test_a_judge_with_its_own_engine(judge_model: Path, generation: GenerationService) -> None:
    """`path:` starts an engine for the judge alone, closed with it; `engine: generator` without a
    generator is refused at start-up."""
    from rewardserve.generation.judge import build_judge, parse_judge
    from rewardserve.registry import BuildContext

    settings = Settings(
        generator_dtype="float32", generator_max_model_len=512, generator_kv_cache_bytes=64 * 2**20
    )
    data = {"name": "own", "path": str(judge_model), "template": TEMPLATE, "choices": CHOICES}
    judge = await build_judge(parse_judge(data, "judges[0]", Path.cwd()), BuildContext(settings, Metrics()))
    try:
        assert judge.owns_engine and judge.generation is not generation
        (result,) = await judge.score(INPUTS[:1], ScoreOptions())
        ids = judge.render({**template_variables(INPUTS[0]), "label": None, "metadata": None})
        choice_ids = [t for t, _ in judge.choice_tokens]
        assert result.score == pytest.approx(
            _reference(judge_model, ids, choice_ids, list(CHOICES.values())), abs=1e-4
        )
    finally:
        await judge.close()
    with pytest.raises(ConfigError, match="no generator is served"):
        shared = {"name": "j", "engine": "generator", "template": TEMPLATE, "choices": CHOICES}
        await build_judge(parse_judge(shared, "judges[1]", Path.cwd()), BuildContext(settings, Metrics()))
    with pytest.raises(ConfigError, match="exactly one of `choices"):
        parse_judge({"name": "j", "engine": "generator", "template": TEMPLATE}, "judges[2]", Path.cwd())
    with pytest.raises(ConfigError, match="capture group"):
        parse_judge(
            {"name": "j", "engine": "generator", "template": TEMPLATE, "pattern": r"\d+"},
            "judges[3]",
            Path.cwd(),
        )


async def test_registry_builds_judges_on_the_served_generator(
    generation: GenerationService, judge_model: Path, tmp_path: Path
) -> None:
    from rewardserve.registry import Registry
    from rewardserve.sources import spec

    config = tmp_path / "judges.yaml"  # JSON is YAML too
    judge = {"name": "judge", "engine": "generator", "template": TEMPLATE, "choices": {"1": 1, "5": 5}}
    config.write_text(json.dumps({"judges": [judge]}))
    entries = spec.load_config_file(config)
    assert [(e.name, e.kind) for e in entries] == [("judge", "judge")]
    settings = Settings(cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="no generator is served"):
        await Registry.build(entries, settings, metrics=Metrics())
    registry = await Registry.build(entries, settings, metrics=Metrics(), generation=generation)
    try:
        assert registry.cards()[0]["kind"] == "judge"
        (result,) = await registry.get("judge").score(INPUTS[:1], ScoreOptions())
        assert result.status == "ok" and result.score is not None and 1.0 <= result.score <= 5.0
    finally:
        await registry.close()
