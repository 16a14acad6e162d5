"""Stand-ins for what issue 14 (r14's branch) provides, so this branch builds and tests on its own.

TODO(merge): delete this module and import from the real places instead:
- ``Status``, ``ScoreOptions``, ``RewardResult`` -> ``rewardserve.scoring.types`` (same fields).
- ``ScoreInput`` -> ``rewardserve.scoring.types.ScoreInput``, which must gain ``label: Any = None``,
  ``metadata: Any = None`` and ``group: str | None = None`` (issue 15's contract; r14 added ``steps``).
- ``Entry`` -> ``rewardserve.sources.spec.Entry``; ``BuildContext`` -> ``rewardserve.registry.BuildContext``,
  which must gain ``generation: GenerationService | None`` for judges with ``engine: generator``.
The copies below match r14's definitions field for field, so only the imports change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rewardserve.scoring.types import Message

if TYPE_CHECKING:
    from rewardserve.config import Settings
    from rewardserve.generation.service import GenerationService
    from rewardserve.metrics import Metrics

Status = Literal["ok", "timeout", "error", "parse_failed"]


@dataclass(frozen=True)
class ScoreInput:
    """One thing to score (r14's ScoreInput plus issue 15's label, metadata and group)."""

    prompt: str | None = None
    response: str | None = None
    messages: tuple[Message, ...] | None = None
    text: str | None = None
    steps: tuple[str, ...] | None = None
    label: Any = None
    metadata: Any = None
    group: str | None = None


@dataclass(frozen=True)
class ScoreOptions:
    truncate: bool = False
    reduce: Literal["mean", "min", "conservative"] | None = None
    step_reduce: Literal["min", "last", "mean", "prod"] | None = None
    deadline: float | None = None  # time.monotonic() by which the call must finish


@dataclass(frozen=True)
class RewardResult:
    """One input's answer from any reward source; ``score`` is None exactly when status != "ok"."""

    score: float | None
    status: Status = "ok"
    tokens: int = 0
    truncated: bool = False
    values: tuple[float, ...] = ()
    objectives: dict[str, float] | None = None
    raw: float | None = None
    members: dict[str, float | None] | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    conservative: float | None = None
    components: dict[str, float | None] | None = None
    step_scores: tuple[float, ...] | None = None
    extras: dict[str, Any] | None = None
    error: str | None = None

    @property
    def mask(self) -> bool:
        return self.status != "ok"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    where: str
    plan: Any
    refs: tuple[str, ...] = ()
    ref_kinds: frozenset[str] | None = None


@dataclass
class BuildContext:
    settings: Settings
    metrics: Metrics | None
    sources: dict[str, Any] = field(default_factory=dict)
    generation: GenerationService | None = None  # NEW for issue 15: the co-served generator
