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
    from rewardserve.registry import Registry
    from rewardserve.sources.base import RewardSource


@dataclass
class Runtime:
    """Services plus the lifecycle flags (loading -> ready -> draining)."""

    settings: Settings
    metrics: Metrics  # the one instance: the services record into it, /metrics renders it
    scoring: ScoringService | None = None  # the default model entry's service (rollout, KServe)
    generation: GenerationService | None = None
    # Every declared source by name (models, composites, reward functions, judges); None for a
    # server of one model, which ``source`` then wraps.
    registry: Registry | None = None
    draining: bool = False
    load_error: str | None = None

    @property
    def ready(self) -> bool:
        generator_ok = self.settings.generator is None or self.generation is not None
        loaded = self.scoring is not None or self.registry is not None
        return loaded and generator_ok and not self.draining

    def source(self, name: str | None = None) -> RewardSource:
        """The reward source a request names (None or "": the default). NotReady while loading or
        draining; ModelNotFound for a name not served. Every scoring door resolves names here."""
        if self.registry is not None:
            if self.draining:
                raise NotReady("server is draining; retry on another replica")
            return self.registry.get(name)
        from rewardserve.sources.model import ModelSource  # one model: the same interface

        scoring = self.require_scoring()
        scoring.check_model(name)
        return ModelSource(scoring.name, scoring)

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
