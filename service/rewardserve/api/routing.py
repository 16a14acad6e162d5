"""What every scoring door does with a request: resolve its ``model``, score, record the entry.

HTTP, gRPC and KServe all come through here, so a request names a reward source the same way on each
(a name, ad hoc weights, or nothing for the default) and its answer is the same number. Nothing here
branches on the kind of source: a model, a PRM, an ensemble or a composite (issue 15: a reward
function or a judge) is one ``RewardSource``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from rewardserve.runtime import Runtime
from rewardserve.scoring.types import Reduce, RewardResult, ScoreInput, ScoreOptions, StepReduce
from rewardserve.sources.base import PairResult, RewardSource
from rewardserve.sources.base import compare as compare_pairs

ModelRef = str | Mapping[str, float] | None  # what a request's "model" may hold


def options(
    *,
    truncate: bool = False,
    reduce: Reduce | None = None,
    step_reduce: StepReduce | None = None,
    timeout: float | None = None,
) -> ScoreOptions:
    """Request options; ``timeout`` (seconds, None = the server's default) becomes a deadline."""
    deadline = None if timeout is None else time.monotonic() + timeout
    return ScoreOptions(truncate=truncate, reduce=reduce, step_reduce=step_reduce, deadline=deadline)


def resolve(runtime: Runtime, model: ModelRef) -> RewardSource:
    """The source a request names; NotReady while loading/draining, ModelNotFound, InputError."""
    return runtime.require_registry().resolve(model if model != "" else None)


async def score(
    runtime: Runtime, model: ModelRef, inputs: Sequence[ScoreInput], opts: ScoreOptions
) -> tuple[RewardSource, list[RewardResult]]:
    """Score ``inputs`` on the source ``model`` names; results in input order."""
    source = resolve(runtime, model)
    results = await source.score(inputs, opts) if inputs else []
    _record(runtime, source, inputs, results)
    return source, results


async def compare(
    runtime: Runtime, model: ModelRef, pairs: Sequence[tuple[ScoreInput, ScoreInput]], opts: ScoreOptions
) -> tuple[RewardSource, list[PairResult]]:
    """Bradley-Terry preference for each pair on the source ``model`` names."""
    source = resolve(runtime, model)
    results = await compare_pairs(source, pairs, opts) if pairs else []
    flat = [r for p in results for r in (p.a, p.b)]
    _record(runtime, source, [side for pair in pairs for side in pair], flat)
    return source, results


def _record(
    runtime: Runtime, source: RewardSource, inputs: Sequence[ScoreInput], results: Sequence[RewardResult]
) -> None:
    """The reward distribution per entry (bounded labels: declared names and "adhoc"). Result counts
    (rewardserve_reward_results_total{model, status}) are kept by every source itself, members and
    components included, so they are not counted again here. An entry with a batcher of its own (a
    model) records its reward distribution there; for the others (ensembles, composites, functions,
    judges) it is recorded here, so every entry has one."""
    m = runtime.metrics
    if getattr(source, "service", None) is None:
        scored = [(r.score, i) for r, i in zip(results, inputs, strict=True) if r.score is not None]
        m.observe_rewards(source.name, [s for s, _ in scored], [float(_length(i)) for _, i in scored])


def _length(inp: ScoreInput) -> int:
    """Length of what a reward may wrongly learn to track: the response (or the last turn, or steps)."""
    if inp.response is not None:
        return len(inp.response)
    if inp.steps is not None:
        return sum(len(s) for s in inp.steps)
    if inp.messages:
        return len(inp.messages[-1].content)
    return len(inp.text or "")
