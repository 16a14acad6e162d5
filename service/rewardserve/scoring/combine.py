"""A composite's reward from its components' results (pure; no torch).

``CompositeSource.score`` builds each input's result here, so the masking rule lives in one place for
every mix of kinds (models, functions, judges).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rewardserve.scoring.types import RewardResult


def combine(weights: Mapping[str, float], component_results: Mapping[str, RewardResult]) -> RewardResult:
    """sum(weight * score) over the components of one input.

    A masked component masks the composite (score None) with that component's status (the first
    masked one in ``weights`` order, so a timeout stays a timeout); ``components`` still shows every
    component's score, None where it failed, so the caller sees what succeeded. Tokens add up;
    truncated if any component truncated.
    """
    missing = [name for name in weights if name not in component_results]
    if missing:
        raise ValueError(f"no result for component(s) {missing}")
    rows = [(name, component_results[name]) for name in weights]
    components = {name: r.score for name, r in rows}
    tokens = sum(r.tokens for _, r in rows)
    truncated = any(r.truncated for _, r in rows)
    for name, r in rows:
        if r.score is None or r.status != "ok":
            status = r.status if r.status != "ok" else "error"
            return RewardResult(
                None,
                status=status,
                tokens=tokens,
                truncated=truncated,
                components=components,
                error=f"component {name!r}: {r.error or r.status}",
            )
    score = math.fsum(weights[name] * float(r.score) for name, r in rows if r.score is not None)
    return RewardResult(score, tokens=tokens, truncated=truncated, components=components)
