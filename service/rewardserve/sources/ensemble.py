"""Ensembles: several reward models score the same inputs; their spread measures uncertainty.

Members are sources of their own (each with its own tokenizer, template, batcher and token budget),
called concurrently, so an ensemble's latency is its slowest member's where cores are free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewardserve.metrics import Metrics
from rewardserve.scoring.types import Reduce, RewardResult, ScoreInput, ScoreOptions
from rewardserve.sources.aggregate import ensemble_stats
from rewardserve.sources.base import RewardSource, masked, score_all


class EnsembleSource:
    """``score`` = mean (or min, or mean - k*std) of the members' rewards; details carry them all."""

    kind = "ensemble"

    def __init__(
        self,
        name: str,
        members: Sequence[RewardSource],
        *,
        conservative_k: float = 1.0,
        reduce: Reduce = "mean",
        metrics: Metrics | None = None,
    ) -> None:
        if not members:
            raise ValueError(f"ensemble {name!r} has no members")
        self.name = name
        self.members = list(members)
        self.conservative_k = conservative_k
        self.reduce: Reduce = reduce
        self.metrics = metrics

    def card(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "kind": self.kind,
            "members": [m.name for m in self.members],
            "conservative_k": self.conservative_k,
            "reduce": self.reduce,
        }

    async def score(self, inputs: Sequence[ScoreInput], options: ScoreOptions) -> list[RewardResult]:
        per_member = await score_all(self.members, inputs, options)
        reduce = options.reduce or self.reduce
        out = []
        for i in range(len(inputs)):
            rows = [results[i] for results in per_member]
            members = {m.name: r.score for m, r in zip(self.members, rows, strict=True)}
            tokens = sum(r.tokens for r in rows)
            truncated = any(r.truncated for r in rows)
            failed = [(m.name, r) for m, r in zip(self.members, rows, strict=True) if r.score is None]
            if failed:
                # A mean over fewer members would silently change what the score means: mask it.
                name, bad = failed[0]
                out.append(masked(f"member {name!r}: {bad.error or bad.status}", tokens, members=members))
                continue
            stats = ensemble_stats([r.score for r in rows if r.score is not None], self.conservative_k)
            out.append(
                RewardResult(
                    stats.pick(reduce),
                    tokens=tokens,
                    truncated=truncated,
                    members=members,
                    mean=stats.mean,
                    std=stats.std,
                    min=stats.min,
                    conservative=stats.conservative,
                )
            )
        if self.metrics is not None:
            self.metrics.count_results(self.name, [r.status for r in out])
        return out

    async def start(self) -> None:
        """Nothing to start: members are registry entries, started (and closed) by the registry."""

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Nothing to close: see ``start``."""
