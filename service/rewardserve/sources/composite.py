"""Composites: a weighted sum of other sources' rewards (each after its own normalization)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rewardserve.scoring.types import RewardResult, ScoreInput, ScoreOptions
from rewardserve.sources.aggregate import weighted_sum
from rewardserve.sources.base import RewardSource, masked, score_all


class CompositeSource:
    """``score`` = sum of weight * reward over the components; details carry each component's."""

    kind = "composite"

    def __init__(self, name: str, components: Sequence[tuple[RewardSource, float]]) -> None:
        if not components:
            raise ValueError(f"composite {name!r} has no components")
        for source, weight in components:
            if not math.isfinite(weight):
                raise ValueError(
                    f"composite {name!r}: weight of {source.name!r} is {weight}; use a finite number"
                )
        self.name = name
        self.sources = [s for s, _ in components]
        self.weights = [w for _, w in components]

    def card(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "kind": self.kind,
            "weights": {s.name: w for s, w in zip(self.sources, self.weights, strict=True)},
        }

    async def score(self, inputs: Sequence[ScoreInput], options: ScoreOptions) -> list[RewardResult]:
        per_source = await score_all(self.sources, inputs, options)
        out = []
        for i in range(len(inputs)):
            rows = [results[i] for results in per_source]
            components = {s.name: r.score for s, r in zip(self.sources, rows, strict=True)}
            tokens = sum(r.tokens for r in rows)
            values = [r.score for r in rows]
            if any(v is None for v in values):
                name, bad = next(
                    (s.name, r) for s, r in zip(self.sources, rows, strict=True) if r.score is None
                )
                out.append(
                    masked(f"component {name!r}: {bad.error or bad.status}", tokens, components=components)
                )
                continue
            score = weighted_sum([v for v in values if v is not None], self.weights)
            truncated = any(r.truncated for r in rows)
            out.append(RewardResult(score, tokens=tokens, truncated=truncated, components=components))
        return out

    async def start(self) -> None:
        """Nothing to start: components are registry entries, started (and closed) by the registry."""

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Nothing to close: see ``start``."""
