"""The arithmetic of combined rewards (no torch): ensemble statistics, step reductions, normalization.

Kept apart from the sources so unit tests check the formulas on plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rewardserve.scoring.types import Reduce, StepReduce


@dataclass(frozen=True)
class EnsembleStats:
    """One input's member rewards summarised. ``std`` is the population std (ddof 0)."""

    mean: float
    std: float
    min: float
    conservative: float  # mean - k * std: a pessimistic reward that punishes disagreement

    def pick(self, reduce: Reduce) -> float:
        return {"mean": self.mean, "min": self.min, "conservative": self.conservative}[reduce]


def ensemble_stats(values: Sequence[float], k: float) -> EnsembleStats:
    """Mean, population std, min and mean - k*std of the members' rewards for one input."""
    if not values:
        raise ValueError("an ensemble needs at least one member reward")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    return EnsembleStats(mean=mean, std=std, min=min(values), conservative=mean - k * std)


def reduce_steps(step_scores: Sequence[float], how: StepReduce) -> float:
    """A process reward model's score from its step scores (each a probability in [0, 1]).

    min: the chain is as good as its worst step (Qwen2.5-Math-PRM's usual use); last: the final
    step's; mean; prod: the probability that every step is right, if they were independent.
    """
    if not step_scores:
        raise ValueError("no step scores to reduce")
    if how == "min":
        return min(step_scores)
    if how == "last":
        return step_scores[-1]
    if how == "mean":
        return math.fsum(step_scores) / len(step_scores)
    if how == "prod":
        return math.prod(step_scores)
    raise ValueError(f"unknown step_reduce {how!r}; expected min, last, mean or prod")


@dataclass(frozen=True)
class Normalization:
    """(r - mean) / std with the statistics a model was calibrated with; ``origin`` says where from."""

    mean: float
    std: float
    origin: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std)) or self.std <= 0:
            raise ValueError(
                f"normalization from {self.origin} needs a finite mean and a std > 0; got mean={self.mean}, "
                f"std={self.std}. Recompute it with `rewardserve calibrate`."
            )

    def apply(self, raw: float) -> float:
        return (raw - self.mean) / self.std

    def card(self) -> dict[str, float | str]:
        return {"mean": self.mean, "std": self.std, "from": self.origin}


def weighted_sum(values: Sequence[float], weights: Sequence[float]) -> float:
    """A composite's score: sum of weight * reward, summed exactly (fsum) so order does not matter."""
    return math.fsum(w * v for w, v in zip(weights, values, strict=True))
