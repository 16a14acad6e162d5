"""Several reward sources at once for ``score-logs --model NAME=PATH ...`` / ``--config FILE``.

The registry the server would build (models, PRMs, ensembles, composites; issue 15's kinds too) runs
in this process on an event loop of its own thread, each model behind its own batcher and compute
workers, exactly as served. Every row is scored by every entry: ``reward_<name>`` columns, one per
declared entry (reported as the scorer's objectives, which ``with_rewards`` writes as such); ``reward``
and ``reward_model`` are the default (first) entry's.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from rewardserve.bulk.job import Failed, OnProgress
from rewardserve.config import Settings
from rewardserve.errors import InputError, RewardServeError
from rewardserve.metrics import Metrics
from rewardserve.registry import Registry
from rewardserve.scoring.types import RewardResult, ScoreInput, ScoreOptions, ScoreOutput

T = TypeVar("T")
# Rows per scoring call: small enough that a bad row costs little to isolate (its call is retried
# row by row), many calls at once so each model's batcher forms full batches from them.
CALL_ROWS = 64


def declares_several(settings: Settings) -> bool:
    """Whether the settings name entries by NAME=PATH or a config file (not one bare --model)."""
    return bool(settings.models) or settings.config is not None


class RegistryScorer:
    """A ``Scorer`` over every entry of a registry built from ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rewardserve-bulk-loop", daemon=True
        )
        self._thread.start()
        try:
            self.registry = self._run(self._build(settings))
        except BaseException:
            self.close()
            raise
        self.names = tuple(self.registry.names)

    async def _build(self, settings: Settings) -> Registry:
        registry = await Registry.from_settings(settings, metrics=Metrics())
        await registry.start()
        return registry

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def model_name(self) -> str:
        return self.names[0]

    @property
    def objectives(self) -> tuple[str, ...]:
        return self.names

    def score(
        self, inputs: Sequence[ScoreInput], *, truncate: bool, on_progress: OnProgress | None = None
    ) -> list[ScoreOutput | Failed]:
        return self._run(self._score(list(inputs), ScoreOptions(truncate=truncate), on_progress))

    async def _score(
        self, inputs: list[ScoreInput], options: ScoreOptions, on_progress: OnProgress | None
    ) -> list[ScoreOutput | Failed]:
        spans = [(i, min(i + CALL_ROWS, len(inputs))) for i in range(0, len(inputs), CALL_ROWS)]

        async def span(start: int, end: int) -> list[ScoreOutput | Failed]:
            rows = await self._rows(inputs[start:end], options)
            if on_progress is not None:
                on_progress(end - start, sum(r.tokens if isinstance(r, ScoreOutput) else 0 for r in rows))
            return rows

        parts = await asyncio.gather(*(span(a, b) for a, b in spans))
        return [r for part in parts for r in part]

    async def _rows(self, inputs: list[ScoreInput], options: ScoreOptions) -> list[ScoreOutput | Failed]:
        """Every entry on ``inputs``; when a call is refused for one input, each row on its own."""
        try:
            per_entry = await self._every_entry(inputs, options)
        except RewardServeError as exc:
            if len(inputs) == 1:
                return [Failed(str(exc))]
            singles = await asyncio.gather(*(self._rows([inp], options) for inp in inputs))
            return [r for rows in singles for r in rows]
        return [self._output([results[i] for results in per_entry]) for i in range(len(inputs))]

    async def _every_entry(self, inputs: list[ScoreInput], options: ScoreOptions) -> list[list[RewardResult]]:
        calls = []
        for source in self.registry:
            calls.append(self._named(source.name, source.score(inputs, options)))
        return list(await asyncio.gather(*calls))

    @staticmethod
    async def _named(name: str, call: Coroutine[Any, Any, list[RewardResult]]) -> list[RewardResult]:
        try:
            return await call
        except InputError as exc:  # say which entry refused the row
            raise InputError(f"{name}: {exc}") from None

    def _output(self, results: list[RewardResult]) -> ScoreOutput | Failed:
        first = results[0]
        if first.score is None:
            return Failed(f"{self.names[0]}: {first.error or first.status}")
        values = tuple(math.nan if r.score is None else r.score for r in results)
        return ScoreOutput(first.score, values, first.tokens, first.truncated)

    def close(self) -> None:
        registry = getattr(self, "registry", None)
        if registry is not None:
            self._run(registry.close(drain=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self._loop.close()
