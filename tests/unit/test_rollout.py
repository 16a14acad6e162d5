"""Rollout group statistics and reward inputs: pure logic, no engine."""

from __future__ import annotations

import math
import statistics

import pytest

from rewardserve.generation.rollout import reward_input
from rewardserve.generation.types import PromptInput
from rewardserve.scoring.advantages import advantages_of_group, group_stats
from rewardserve.scoring.types import Message, ScoreInput


def grpo_advantages(rewards: list[float], eps: float) -> list[float]:
    """What /v1/rollout computes with ``"advantages": true`` (scoring/advantages.py since issue 15)."""
    return advantages_of_group(rewards, "grpo", eps)


def test_group_stats_are_mean_and_sample_std() -> None:
    rewards = [0.5, -1.25, 2.0, 0.0]
    mean, std = group_stats(rewards)
    assert mean == pytest.approx(statistics.mean(rewards)) and std == pytest.approx(statistics.stdev(rewards))


def test_single_sample_group_has_zero_std_and_advantage() -> None:
    assert group_stats([3.0]) == (3.0, 0.0)
    assert grpo_advantages([3.0], 1e-6) == [0.0]
    with pytest.raises(ValueError):
        group_stats([])


def test_grpo_advantages_normalise_within_the_group() -> None:
    rewards = [1.0, 2.0, 3.0, 6.0]
    advs = grpo_advantages(rewards, eps=0.1)
    mean, std = statistics.mean(rewards), statistics.stdev(rewards)
    assert advs == pytest.approx([(r - mean) / (std + 0.1) for r in rewards])
    assert math.fsum(advs) == pytest.approx(0.0, abs=1e-12)
    same = grpo_advantages([0.7, 0.7, 0.7], eps=1e-6)  # no signal: all zero, no division blow-up
    assert same == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)


def test_reward_input_is_what_score_would_get() -> None:
    assert reward_input(PromptInput(text="2+2?"), "4") == ScoreInput(prompt="2+2?", response="4")
    chat = (Message("system", "be brief"), Message("user", "hi"))
    assert reward_input(PromptInput(messages=chat), "hello") == ScoreInput(
        messages=(*chat, Message("assistant", "hello"))
    )
