"""Rollout: sample n responses per prompt from the policy, score them, group statistics. One call.

Each sample is scored exactly as ``/v1/score`` would score the same pair: a text prompt becomes
``{"prompt": p, "response": sample}`` and a conversation becomes the messages plus an assistant turn,
both through the reward model's own chat template (ScoringService does the rendering). All samples of
a call go to the scorer in one request, so its batcher packs them together.

Group statistics and advantages come from ``scoring/advantages.py``, the same code ``/v1/score``'s
``advantage`` uses: the mean and the sample standard deviation (ddof=1, as TRL and verl compute them) of
each prompt's n rewards, and the GRPO advantage ``(r - mean) / (std + eps)``. A group of one sample has
std 0 (not NaN) and advantage 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rewardserve.generation.service import GenerationService
from rewardserve.generation.types import PromptInput, Sample, SamplingOptions
from rewardserve.scoring.advantages import group_advantages, group_stats
from rewardserve.scoring.service import ScoringService
from rewardserve.scoring.types import Message, ScoreInput


@dataclass(frozen=True)
class ScoredSample:
    sample: Sample
    reward: float | None  # None: masked (a reward source that failed for this sample)
    advantage: float | None


@dataclass(frozen=True)
class RolloutGroup:
    """One prompt's samples with their rewards, and the group's reward mean and std."""

    prompt_tokens: int
    samples: tuple[ScoredSample, ...]
    mean: float | None  # None when every sample of the group is masked
    std: float | None


@dataclass(frozen=True)
class RolloutResult:
    groups: tuple[RolloutGroup, ...]
    weights_version: int
    reward_model: str
    reward_tokens: int


def reward_input(prompt: PromptInput, response: str) -> ScoreInput:
    """What the reward model scores for ``response`` to ``prompt`` (the /v1/score equivalent)."""
    if prompt.messages is not None:
        return ScoreInput(messages=(*prompt.messages, Message("assistant", response)))
    return ScoreInput(prompt=prompt.text or "", response=response)


async def rollout(
    generation: GenerationService,
    scoring: ScoringService,
    prompts: Sequence[PromptInput],
    opts: SamplingOptions,
    *,
    model: str | None = None,
    generator: str | None = None,
    truncate: bool = False,
    advantages: bool = False,
    eps: float = 1e-6,
) -> RolloutResult:
    """Generate, score and group. Raises what generate and score raise (the reward model is checked
    first, so a wrong name costs no generation)."""
    scoring.check_model(model)
    generated = await generation.generate(prompts, opts, generator=generator)
    inputs = [
        reward_input(prompt, s.text)
        for prompt, result in zip(prompts, generated.results, strict=True)
        for s in result.samples
    ]
    scores = await scoring.score(inputs, model=model, truncate=truncate)
    groups = []
    at = 0
    for result in generated.results:
        outs = scores[at : at + len(result.samples)]
        at += len(result.samples)
        rewards: list[float | None] = [o.score for o in outs]
        # Masked rewards (None) are left out of the group's statistics, as /v1/score's advantages.
        scored = [r for r in rewards if r is not None]
        mean, std = group_stats(scored) if scored else (None, None)
        advs: list[float | None] = (
            group_advantages(rewards, [None] * len(rewards), "grpo", eps)
            if advantages
            else [None] * len(rewards)
        )
        groups.append(
            RolloutGroup(
                prompt_tokens=result.prompt_tokens,
                samples=tuple(
                    ScoredSample(sample=s, reward=r, advantage=a)
                    for s, r, a in zip(result.samples, rewards, advs, strict=True)
                ),
                mean=mean,
                std=std,
            )
        )
    return RolloutResult(
        groups=tuple(groups),
        weights_version=generated.weights_version,
        reward_model=scoring.name,
        reward_tokens=sum(o.tokens for o in scores),
    )
