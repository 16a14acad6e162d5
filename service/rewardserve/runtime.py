"""The running service's shared state, read by every transport handler."""

from __future__ import annotations

from dataclasses import dataclass, field

from rewardserve.config import Settings
from rewardserve.errors import NotReady
from rewardserve.metrics import Metrics
from rewardserve.scoring.service import ScoringService


@dataclass
class Runtime:
    """Services plus the lifecycle flags (loading -> ready -> draining)."""

    settings: Settings
    scoring: ScoringService | None = None
    draining: bool = False
    load_error: str | None = None
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def ready(self) -> bool:
        return self.scoring is not None and not self.draining

    def require_scoring(self) -> ScoringService:
        """The scoring service, or NotReady (503 / UNAVAILABLE) while loading or draining."""
        if self.draining:
            raise NotReady("server is draining; retry on another replica")
        if self.scoring is None:
            raise NotReady("model is still loading" if self.load_error is None else "model failed to load")
        return self.scoring
