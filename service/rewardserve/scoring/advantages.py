"""Group advantages for GRPO-style trainers, from the rewards of one request (pure Python, no torch).

Inputs that share a ``group`` (one prompt's samples) are normalized together:

- ``grpo``:   (r - mean) / (std + eps), std the sample standard deviation (ddof 1, ``torch.std``'s
  default, as TRL and verl compute it). eps defaults to 1e-6 (verl's; TRL uses 1e-4).
- ``drgrpo``: r - mean (Dr. GRPO drops the std division, which favours easy and hard prompts).
- ``rloo``:   r - mean of the group's *other* samples (leave-one-out baseline).

Masked samples (score None: a verifier timed out, a judge's answer did not parse) are left out of
their group's statistics and get advantage None, as TRL's GRPOTrainer leaves NaN rewards out of its
nan-aware baseline. A group with one scored sample gets advantage 0 under every method: TRL defines
its std as 0 (not NaN) there, so (r - mean) = 0; RLOO has no other sample to form a baseline from,
and 0 is the "no signal" answer rather than verl's raw reward.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Literal, get_args

from rewardserve.scoring.types import RewardResult, ScoreInput

Advantage = Literal["grpo", "drgrpo", "rloo"]
ADVANTAGES: tuple[str, ...] = get_args(Advantage)
DEFAULT_EPS = 1e-6


def group_stats(rewards: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for fewer than two rewards, as TRL)."""
    if not rewards:
        raise ValueError("a group needs at least one reward")
    mean = math.fsum(rewards) / len(rewards)
    if len(rewards) < 2:
        return mean, 0.0
    var = math.fsum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)
    return mean, math.sqrt(var)


def advantages_of_group(rewards: Sequence[float], method: Advantage, eps: float = DEFAULT_EPS) -> list[float]:
    """The advantages of one group's (unmasked) rewards, in order."""
    if method not in ADVANTAGES:
        raise ValueError(f"unknown advantage {method!r}; use one of {list(ADVANTAGES)}")
    if not rewards:
        return []
    n = len(rewards)
    mean, std = group_stats(rewards)
    if method == "grpo":
        return [(r - mean) / (std + eps) for r in rewards]
    if method == "drgrpo":
        return [r - mean for r in rewards]
    if n == 1:
        return [0.0]
    total = math.fsum(rewards)
    return [r - (total - r) / (n - 1) for r in rewards]


def group_advantages(
    scores: Sequence[float | None],
    groups: Sequence[Hashable | None],
    method: Advantage,
    eps: float = DEFAULT_EPS,
) -> list[float | None]:
    """Each input's advantage within its group; ``scores[i]`` None (masked) gives None.

    ``groups[i]`` is the input's group key; inputs without one (None) form one group together, so a
    call that sends one prompt's samples needs no group names.
    """
    if len(scores) != len(groups):
        raise ValueError(f"{len(scores)} scores but {len(groups)} group keys")
    members: dict[Hashable | None, list[tuple[int, float]]] = {}
    for i, (score, group) in enumerate(zip(scores, groups, strict=True)):
        if score is not None:
            members.setdefault(group, []).append((i, float(score)))
    out: list[float | None] = [None] * len(scores)
    for scored in members.values():
        advs = advantages_of_group([r for _, r in scored], method, eps)
        for (i, _), adv in zip(scored, advs, strict=True):
            out[i] = adv
    return out


def apply_advantages(
    inputs: Sequence[ScoreInput],
    results: Sequence[RewardResult],
    method: Advantage,
    eps: float = DEFAULT_EPS,
) -> list[RewardResult]:
    """``results`` with ``advantage`` set within each input's ``group`` (what a request's
    ``"advantage"`` option asks for); masked results keep advantage None and are left out of their
    group's statistics."""
    if len(inputs) != len(results):
        raise ValueError(f"{len(inputs)} inputs but {len(results)} results")
    advs = group_advantages([r.score for r in results], [i.group for i in inputs], method, eps)
    return [replace(r, advantage=a) for r, a in zip(results, advs, strict=True)]
