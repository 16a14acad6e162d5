"""One declared reward source, as every section parser returns it (models here, reward functions in
functions/, judges in generation/: they import this small module, and sources/spec.py imports them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from rewardserve.errors import ConfigError

if TYPE_CHECKING:
    from rewardserve.config import Settings
    from rewardserve.generation.service import GenerationService
    from rewardserve.metrics import Metrics
    from rewardserve.sources.base import RewardSource

Config = TypeVar("Config", bound=BaseModel)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # safe in URLs (/get_reward/{name}) and labels


@dataclass(frozen=True)
class Entry:
    """One declared source, checked on its own; ``validate`` checks it against the others."""

    name: str
    kind: str
    where: str  # "models[2]", for error messages
    plan: Any  # what the kind's builder needs (ModelPlan, EnsembleConfig, ...)
    refs: tuple[str, ...] = ()
    ref_kinds: frozenset[str] | None = None  # kinds refs may have; None = any


def parse_section_entry(model: type[Config], data: object, where: str) -> Config:
    """One YAML section entry validated into ``model``; a ConfigError naming the entry and each
    problem otherwise (every section parser's first step)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
        )
        name = data.get("name")
        raise ConfigError(f"{where}{f' {name!r}' if name else ''}: {problems}") from None


@dataclass
class BuildContext:
    """What a builder gets: the server's settings and metrics, and the sources built so far (every
    entry an entry names is built before it). Here, not in registry.py, so that the builders of
    every kind (functions/, generation/judge.py) never import the registry that imports them."""

    settings: Settings
    metrics: Metrics
    sources: dict[str, RewardSource] = field(default_factory=dict)
    generation: GenerationService | None = None  # the co-served generator (judges' engine: generator)
