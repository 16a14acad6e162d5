"""One declared reward source, as every section parser returns it (models here, reward functions in
functions/, judges in generation/: they import this small module, and sources/spec.py imports them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
