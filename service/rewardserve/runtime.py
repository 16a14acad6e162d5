"""The running service's shared state, read by every transport handler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rewardserve.config import Settings
from rewardserve.errors import ModelNotFound, NotReady
from rewardserve.metrics import Metrics
from rewardserve.scoring.service import ScoringService

if TYPE_CHECKING:  # the generation package is imported only when a generator is configured
    from rewardserve.generation.service import GenerationService


@dataclass
class Runtime:
    """Services plus the lifecycle flags (loading -> ready -> draining).

    ``stalled`` (set by the watchdog while a forward or engine step runs past watchdog_timeout_s)
    makes readiness fail until it clears; ``fatal`` (the vLLM engine or a batcher loop died) makes
    liveness fail too: the process is exiting non-zero so the orchestrator restarts it."""

    settings: Settings
    metrics: Metrics  # the one instance: the services record into it, /metrics renders it
    scoring: ScoringService | None = None
    generation: GenerationService | None = None
    draining: bool = False
    load_error: str | None = None
    stalled: str | None = None
    fatal: str | None = None

    @property
    def live(self) -> bool:
        return self.fatal is None

    @property
    def ready(self) -> bool:
        generator_ok = self.settings.generator is None or self.generation is not None
        healthy = self.stalled is None and self.fatal is None
        return self.scoring is not None and generator_ok and not self.draining and healthy

    @property
    def status(self) -> str:
        """What /health/ready reports: ready | loading | draining | failed | stalled."""
        if self.fatal is not None or self.load_error is not None:
            return "failed"
        if self.draining:
            return "draining"
        if self.stalled is not None:
            return "stalled"
        return "ready" if self.ready else "loading"

    def require_scoring(self) -> ScoringService:
        """The scoring service, or NotReady (503 / UNAVAILABLE) while loading or draining."""
        if self.draining:
            raise NotReady("server is draining; retry on another replica")
        if self.scoring is None:
            raise NotReady("model is still loading" if self.load_error is None else "model failed to load")
        return self.scoring

    def require_generation(self) -> GenerationService:
        """The generation service; ModelNotFound (404) when none is configured, NotReady (503) while
        it loads or the server drains."""
        if self.settings.generator is None:
            raise ModelNotFound(
                "this server has no policy generator (scoring only); start it with --generator MODEL_DIR"
            )
        if self.draining:
            raise NotReady("server is draining; retry on another replica")
        if self.generation is None:
            raise NotReady(
                "generator is still loading" if self.load_error is None else "generator failed to load"
            )
        return self.generation
