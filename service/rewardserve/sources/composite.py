"""Composites: a weighted sum of other sources' rewards (each after its own normalization).

Components may be of any kind (models, ensembles, reward functions, judges): they are scored
concurrently, so a verifier's worker processes run while the model's forward does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rewardserve.metrics import Metrics
from rewardserve.scoring.combine import combine
from rewardserve.scoring.types import RewardResult, ScoreInput, ScoreOptions
from rewardserve.sources.base import RewardSource, score_all


class CompositeSource:
    """``score`` = sum of weight * reward over the components; details carry each component's."""

    kind = "composite"

    def __init__(
        self,
        name: str,
        components: Sequence[tuple[RewardSource, float]],
        *,
        metrics: Metrics | None = None,
    ) -> None:
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
        self.metrics = metrics
        self._by_name = {s.name: w for s, w in components}

    def card(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "kind": self.kind,
            "weights": {s.name: w for s, w in zip(self.sources, self.weights, strict=True)},
        }

    async def score(self, inputs: Sequence[ScoreInput], options: ScoreOptions) -> list[RewardResult]:
        per_source = await score_all(self.sources, inputs, options)
        # A masked component masks the composite with its status (combine); components show the rest.
        out = [
            combine(
                self._by_name,
                {s.name: results[i] for s, results in zip(self.sources, per_source, strict=True)},
            )
            for i in range(len(inputs))
        ]
        if self.metrics is not None:
            self.metrics.count_results(self.name, [r.status for r in out])
        return out

    async def start(self) -> None:
        """Nothing to start: components are registry entries, started (and closed) by the registry."""

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Nothing to close: see ``start``."""
