"""The registry: every reward source the server holds, by name (models, PRMs, ensembles, composites,
reward functions, judges).

Transports never branch on the kind: they call ``registry.resolve(model)`` with what the request
named (a name, ad hoc weights, or nothing for the default) and ``await source.score(inputs, options)``.
Each kind has a builder in ``BUILDERS`` (and a section parser in sources/spec.py): reward functions
and judges are kinds like the others, so transports never see the difference.

No torch here: model sources are imported by their builder.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rewardserve.config import Settings
from rewardserve.errors import ConfigError, InputError, ModelNotFound
from rewardserve.metrics import Metrics
from rewardserve.sources import spec
from rewardserve.sources.base import RewardSource
from rewardserve.sources.composite import CompositeSource
from rewardserve.sources.ensemble import EnsembleSource
from rewardserve.sources.entry import BuildContext
from rewardserve.sources.spec import CompositeConfig, EnsembleConfig, Entry

if TYPE_CHECKING:
    from rewardserve.generation.service import GenerationService
    from rewardserve.scoring.service import ScoringService

ADHOC_NAME = "adhoc"  # the name ad hoc weights are scored (and labelled in metrics) under


Builder = Callable[[Entry, BuildContext], Awaitable[RewardSource]]


async def _build_model(entry: Entry, ctx: BuildContext) -> RewardSource:
    from rewardserve.sources.model import load_model_source

    return await load_model_source(entry.plan, ctx.settings, ctx.metrics)


async def _build_ensemble(entry: Entry, ctx: BuildContext) -> RewardSource:
    cfg: EnsembleConfig = entry.plan
    members = [ctx.sources[m] for m in cfg.members]
    return EnsembleSource(
        cfg.name, members, conservative_k=cfg.conservative_k, reduce=cfg.reduce, metrics=ctx.metrics
    )


async def _build_composite(entry: Entry, ctx: BuildContext) -> RewardSource:
    cfg: CompositeConfig = entry.plan
    return CompositeSource(
        cfg.name, [(ctx.sources[n], w) for n, w in cfg.weights.items()], metrics=ctx.metrics
    )


async def _build_function(entry: Entry, ctx: BuildContext) -> RewardSource:
    from rewardserve.functions.source import build_function

    return await build_function(entry, ctx)


async def _build_judge(entry: Entry, ctx: BuildContext) -> RewardSource:
    from rewardserve.generation.judge import build_judge  # jinja2 + the generator: only when declared

    return await build_judge(entry, ctx)


BUILDERS: dict[str, Builder] = {
    "model": _build_model,
    "prm": _build_model,
    "ensemble": _build_ensemble,
    "composite": _build_composite,
    "function": _build_function,
    "judge": _build_judge,
}


class Registry:
    """Name -> reward source, in declaration order; the first is the default."""

    def __init__(self, sources: Sequence[RewardSource], *, metrics: Metrics | None = None) -> None:
        if not sources:
            raise ConfigError("a registry needs at least one reward source")
        self._sources: dict[str, RewardSource] = {}
        for s in sources:
            if s.name in self._sources:
                raise ConfigError(f"name {s.name!r} is declared twice; names must be unique")
            self._sources[s.name] = s
        self.default: RewardSource = sources[0]
        self.metrics = metrics  # ad hoc composites count their results here

    # ---------------------------------------------------------------- building
    @classmethod
    async def from_settings(
        cls, settings: Settings, *, metrics: Metrics, generation: GenerationService | None = None
    ) -> Registry:
        """Parse and check the declaration (--config / --model / --reward-fn), then load every entry.
        ``generation``: the co-served generator, for judges declared with ``engine: generator``."""
        return await cls.build(spec.from_settings(settings), settings, metrics=metrics, generation=generation)

    @classmethod
    async def build(
        cls,
        entries: Sequence[Entry],
        settings: Settings,
        *,
        metrics: Metrics,
        generation: GenerationService | None = None,
    ) -> Registry:
        """Build checked entries, dependencies first; on a failure, close what was built and raise."""
        ctx = BuildContext(settings, metrics, generation=generation)
        try:
            for entry in spec.dependency_order(entries):
                builder = BUILDERS.get(entry.kind)
                if builder is None:
                    raise ConfigError(f"{entry.where} {entry.name!r}: no builder for kind {entry.kind!r}")
                ctx.sources[entry.name] = await builder(entry, ctx)
        except BaseException:
            await asyncio.gather(
                *(s.close(drain=False) for s in ctx.sources.values()), return_exceptions=True
            )
            raise
        return cls([ctx.sources[e.name] for e in entries], metrics=metrics)

    # ---------------------------------------------------------------- lookup
    @property
    def names(self) -> list[str]:
        return list(self._sources)

    def __iter__(self) -> Iterator[RewardSource]:
        return iter(self._sources.values())

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def get(self, name: str | None = None) -> RewardSource:
        """The source called ``name``; None or "" is the default. Unknown: ModelNotFound (404)."""
        if not name:
            return self.default
        source = self._sources.get(name)
        if source is None:
            raise ModelNotFound(f"model {name!r} is not served here; available: {self.names}")
        return source

    def resolve(self, model: str | Mapping[str, float] | None) -> RewardSource:
        """What a request's ``"model"`` field names: a name, ad hoc weights, or None (the default)."""
        if model is None or isinstance(model, str):
            return self.get(model)
        return self.adhoc(model)

    def adhoc(self, weights: Mapping[str, float]) -> CompositeSource:
        """A composite for one request: ``{"helpful": 1.0, "safety": 0.5}``. Bad weights: InputError."""
        if not weights:
            raise InputError('"model" weights are empty; name at least one model, e.g. {"helpful": 1.0}')
        components = []
        for name, weight in weights.items():
            if name not in self._sources:
                raise ModelNotFound(
                    f"model {name!r} in the weights is not served here; available: {self.names}"
                )
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise InputError(f'"model" weight of {name!r} must be a finite number, got {weight!r}')
            components.append((self._sources[name], float(weight)))
        return CompositeSource(ADHOC_NAME, components, metrics=self.metrics)

    def cards(self) -> list[dict[str, Any]]:
        """Every entry's card, in declaration order (/v1/models, ListModels); the default is first."""
        return [s.card() for s in self._sources.values()]

    def scoring_services(self) -> dict[str, ScoringService]:
        """Each model entry's ScoringService (drain, metrics probes, bulk); ensembles own none."""
        out = {}
        for s in self._sources.values():
            service = getattr(s, "service", None)
            if service is not None:
                out[s.name] = service
        return out

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        for s in self._sources.values():
            await s.start()

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Close every source at once (each drains its own queue within ``timeout``)."""
        await asyncio.gather(*(s.close(drain=drain, timeout=timeout) for s in self._sources.values()))

    @property
    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.scoring_services().values())

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no model has a call in flight. True if idle before the timeout."""
        results = await asyncio.gather(*(s.wait_idle(timeout) for s in self.scoring_services().values()))
        return all(results)
