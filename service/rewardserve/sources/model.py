"""Model entries: one loaded reward model (or PRM) behind its own ScoringService and batcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from rewardserve.config import Settings
from rewardserve.errors import ConfigError, InputError
from rewardserve.metrics import Metrics
from rewardserve.scoring.service import ScoringService
from rewardserve.scoring.types import RewardResult, ScoreInput, ScoreOptions, ScoreOutput, StepReduce
from rewardserve.sources.aggregate import Normalization, reduce_steps


class ModelSource:
    """A reward model (kind "model") or process reward model (kind "prm") served by name.

    ``normalization`` maps the raw reward to (r - mean) / std; the raw value stays in ``raw``. For a
    PRM the raw reward is the steps reduced by ``step_reduce`` (request option, else the entry's).
    """

    def __init__(
        self,
        name: str,
        service: ScoringService,
        *,
        kind: str = "model",
        normalization: Normalization | None = None,
        step_reduce: StepReduce = "min",
        memory_bytes: int = 0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.service = service
        self.normalization = normalization
        self.step_reduce: StepReduce = step_reduce
        self.memory_bytes = memory_bytes
        info = service.engine.info
        self._objectives = info.objectives if info.head == "multi_objective" else ()

    def card(self) -> dict[str, Any]:
        card = self.service.engine.info.card()
        card.update(id=self.name, kind=self.kind, memory_bytes=self.memory_bytes)
        card["normalize"] = self.normalization.card() if self.normalization is not None else None
        if self.kind == "prm":
            card["step_separator"] = getattr(self.service.engine, "separator", None)
            card["step_reduce"] = self.step_reduce
        return card

    async def score(self, inputs: Sequence[ScoreInput], options: ScoreOptions) -> list[RewardResult]:
        if self.kind != "prm":
            for i, inp in enumerate(inputs):
                if inp.steps is not None:
                    raise InputError(
                        f"steps are scored by process reward models; {self.name!r} is an outcome reward "
                        "model: send prompt/response, messages or text",
                        index=i,
                    )
        timeout = None if options.deadline is None else max(0.0, options.deadline - time.monotonic())
        outputs = await self.service.score(inputs, truncate=options.truncate, timeout=timeout)
        step_reduce = options.step_reduce or self.step_reduce
        results = [self._result(o, step_reduce) for o in outputs]
        self.service.metrics.count_results(self.name, [r.status for r in results])
        return results

    def _result(self, o: ScoreOutput, step_reduce: StepReduce) -> RewardResult:
        raw = o.score
        if o.step_scores is not None:
            raw = reduce_steps(o.step_scores, step_reduce)
        objectives = dict(zip(self._objectives, o.values, strict=True)) if self._objectives else None
        norm = self.normalization
        return RewardResult(
            norm.apply(raw) if norm is not None else raw,
            tokens=o.tokens,
            truncated=o.truncated,
            values=o.values,
            objectives=objectives,
            raw=raw if norm is not None else None,
            step_scores=o.step_scores,
        )

    async def start(self) -> None:
        await self.service.start()

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        await self.service.close(drain=drain, timeout=timeout)


async def load_model_source(plan: Any, base: Settings, metrics: Metrics) -> ModelSource:
    """Load a declared model (its own Settings, engine, warm-up and ScoringService) off the loop."""
    from rewardserve.scoring.engine import RewardEngine
    from rewardserve.scoring.prm import PRMEngine
    from rewardserve.sources.spec import ModelPlan

    assert isinstance(plan, ModelPlan)
    cfg = plan.config
    settings = cfg.settings(base)
    path = cfg.path
    if path is None:  # nothing declared: the built-in demo model, as a bare `serve` has always done
        from rewardserve.demo.build import ensure_demo_model

        path = await asyncio.to_thread(ensure_demo_model, settings.cache_dir)
    engine: RewardEngine
    try:
        if cfg.kind == "prm":
            engine = await asyncio.to_thread(
                PRMEngine.load, path, settings, name=cfg.name, step_separator=cfg.step_separator
            )
        else:
            engine = await asyncio.to_thread(RewardEngine.load, path, settings, name=cfg.name)
    except ValueError as exc:  # a wrong head, a separator the tokenizer lacks, an unknown objective
        raise ConfigError(f"model {cfg.name!r} ({path}): {exc}") from exc
    if settings.warmup:
        await asyncio.to_thread(engine.warmup)
    memory = sum(t.numel() * t.element_size() for t in (*engine.model.parameters(), *engine.model.buffers()))
    service = ScoringService(engine, settings, metrics=metrics)
    return ModelSource(
        cfg.name,
        service,
        kind=cfg.kind or "model",
        normalization=plan.normalization,
        step_reduce=cfg.step_reduce,
        memory_bytes=int(memory),
    )
