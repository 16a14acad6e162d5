"""The one interface every reward source implements, and what is built on it for all kinds."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rewardserve.errors import InputError
from rewardserve.scoring.types import RewardResult, ScoreInput, ScoreOptions


@runtime_checkable
class RewardSource(Protocol):
    """A named thing that turns inputs into rewards: results in input order, one per input.

    ``kind`` is "model" | "prm" | "ensemble" | "composite" (issue 15: "function" | "judge").
    ``score`` raises the package's errors for the whole call (InputError with ``index``, Overloaded,
    DeadlineExceeded); per-input failures of sources that can fail per input come back as results
    with ``status`` != "ok".
    """

    name: str
    kind: str

    def card(self) -> dict[str, Any]:
        """The /v1/models (and ListModels) entry: "id", "kind" and what else describes it."""
        ...

    async def score(self, inputs: Sequence[ScoreInput], options: ScoreOptions) -> list[RewardResult]: ...

    async def start(self) -> None: ...

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None: ...


@dataclass(frozen=True)
class PairResult:
    """One pair's preference: ``margin`` = r_a - r_b, ``probability`` = sigmoid(margin) = P(a > b).
    Both are None when either side is masked."""

    margin: float | None
    probability: float | None
    a: RewardResult
    b: RewardResult


async def compare(
    source: RewardSource, pairs: Sequence[tuple[ScoreInput, ScoreInput]], options: ScoreOptions
) -> list[PairResult]:
    """Bradley-Terry preference of ``a`` over ``b`` for each pair, on any source. Both sides of every
    pair go in one scoring call, so they are batched (and admitted, and timed out) together.

    A pairwise judge (``pairwise: true``) reads both sides at once: its value for the pair is the
    ``margin``, and the ``probability`` too when it lies in [0, 1] (choices such as {"A": 1, "B": 0}
    give P(a better)), else its sigmoid. ``a`` and ``b`` both carry the judge's result."""
    if getattr(source, "pairwise", False):
        judged = await source.compare(pairs, options)  # type: ignore[attr-defined]
        return [_judged_pair(r) for r in judged]
    flat = [side for pair in pairs for side in pair]
    try:
        results = await source.score(flat, options)
    except InputError as exc:
        if exc.index is None:
            raise
        detail = str(exc).removeprefix(f"inputs[{exc.index}]: ")
        raise InputError(f"pairs[{exc.index // 2}].{'ab'[exc.index % 2]}: {detail}") from None
    out = []
    for a, b in zip(results[::2], results[1::2], strict=True):
        if a.score is None or b.score is None:
            out.append(PairResult(None, None, a, b))
        else:
            margin = a.score - b.score
            out.append(PairResult(margin, 0.5 * (1.0 + math.tanh(margin / 2)), a, b))  # sigmoid, no overflow
    return out


def _judged_pair(r: RewardResult) -> PairResult:
    if r.score is None:
        return PairResult(None, None, r, r)
    p = r.score if 0.0 <= r.score <= 1.0 else 0.5 * (1.0 + math.tanh(r.score / 2))
    return PairResult(r.score, p, r, r)


async def score_all(
    sources: Sequence[RewardSource], inputs: Sequence[ScoreInput], options: ScoreOptions
) -> list[list[RewardResult]]:
    """Score the same inputs on several sources at once; if one call fails, the others are cancelled
    (their work is wasted anyway) and that error is raised."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(s.score(inputs, options)) for s in sources]
    except BaseExceptionGroup as eg:
        # One caller, one error: the first real one (the rest are usually the same input's fault).
        first = eg.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


def masked(error: str, tokens: int = 0, **fields: Any) -> RewardResult:
    """A result whose input could not be scored: score None, status error."""
    return RewardResult(None, status="error", tokens=tokens, error=error, **fields)
