"""Group advantages: hand-computed values, TRL's own formula, masking; and the composite rule."""

from __future__ import annotations

import math

import pytest
import torch

from rewardserve.scoring.advantages import advantages_of_group, group_advantages, group_stats
from rewardserve.scoring.combine import combine
from rewardserve.scoring.types import RewardResult


def test_hand_computed() -> None:
    rewards = [1.0, 2.0, 3.0, 6.0]  # mean 3, sample var (4+1+0+9)/3 = 14/3
    std = math.sqrt(14 / 3)
    assert group_stats(rewards) == pytest.approx((3.0, std))
    assert advantages_of_group(rewards, "grpo") == pytest.approx([(r - 3) / (std + 1e-6) for r in rewards])
    assert advantages_of_group(rewards, "drgrpo") == pytest.approx([-2.0, -1.0, 0.0, 3.0])
    # RLOO: r - mean(others): 1 - 11/3, 2 - 10/3, 3 - 3, 6 - 2
    assert advantages_of_group(rewards, "rloo") == pytest.approx([-8 / 3, -4 / 3, 0.0, 4.0])


def test_singletons_and_ties_are_zero() -> None:
    for method in ("grpo", "drgrpo", "rloo"):
        assert advantages_of_group([5.0], method) == [0.0]  # type: ignore[arg-type]
        assert advantages_of_group([2.0, 2.0, 2.0], method) == [0.0, 0.0, 0.0]  # type: ignore[arg-type]


def test_matches_trl_formula() -> None:
    """TRL GRPOTrainer: mean and torch.std (ddof 1) per group of num_generations, then
    (r - mean) / (std + eps)."""
    torch.manual_seed(0)
    num_generations, eps = 4, 1e-6
    rewards = torch.randn(3 * num_generations, dtype=torch.float64)
    grouped = rewards.view(-1, num_generations)
    mean = grouped.mean(dim=1).repeat_interleave(num_generations)
    std = grouped.std(dim=1).repeat_interleave(num_generations)
    expected = ((rewards - mean) / (std + eps)).tolist()
    groups = [f"p{i // num_generations}" for i in range(len(rewards))]
    got = group_advantages(rewards.tolist(), groups, "grpo", eps)
    assert got == pytest.approx(expected, abs=1e-12)


def test_masked_samples_are_left_out() -> None:
    scores = [1.0, None, 3.0, 10.0, None, None]
    groups = ["a", "a", "a", "b", "b", "c"]
    got = group_advantages(scores, groups, "drgrpo")
    assert got == [-1.0, None, 1.0, 0.0, None, None]
    # Ungrouped inputs form one group together.
    assert group_advantages([1.0, 3.0], [None, None], "drgrpo") == [-1.0, 1.0]
    with pytest.raises(ValueError, match="unknown advantage"):
        group_advantages([1.0], [None], "ppo")  # type: ignore[arg-type]


def test_combine_masks_on_any_masked_component() -> None:
    ok = combine({"math": 1.0, "rm": 0.5}, {"math": RewardResult(1.0), "rm": RewardResult(2.0, tokens=7)})
    assert ok.score == 2.0 and ok.status == "ok" and ok.tokens == 7
    assert ok.components == {"math": 1.0, "rm": 2.0}
    bad = combine(
        {"math": 1.0, "rm": 0.5},
        {"math": RewardResult(None, status="timeout", error="timed out"), "rm": RewardResult(2.0)},
    )
    assert bad.score is None and bad.status == "timeout" and bad.mask
    assert bad.components == {"math": None, "rm": 2.0}  # what succeeded is still shown
    assert bad.error == "component 'math': timed out"
    with pytest.raises(ValueError, match="no result"):
        combine({"x": 1.0}, {})
