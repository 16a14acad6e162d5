"""The running service's shared state, read by every transport handler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rewardserve.config import Settings
from rewardserve.errors import ModelNotFound, NotReady
from rewardserve.metrics import Metrics

if TYPE_CHECKING:  # the generation package is imported only when a generator is configured
    from rewardserve.generation.service import GenerationService
    from rewardserve.registry import Registry
    from rewardserve.scoring.service import ScoringService


@dataclass
class Runtime:
    """Services plus the lifecycle flags (loading -> ready -> draining).

    ``stalled`` (set by the watchdog while a forward or engine step runs past watchdog_timeout_s)
    makes readiness fail until it clears; ``fatal`` (the vLLM engine or a batcher loop died) makes
    liveness fail too: the process is exiting non-zero so the orchestrator restarts it."""

    settings: Settings
    metrics: Metrics  # the one instance: the services record into it, /metrics renders it
    registry: Registry | None = None  # every reward source by name; None while loading
    generation: GenerationService | None = None
    draining: bool = False
    load_error: str | None = None
    stalled: str | None = None
    fatal: str | None = None

    @property
    def live(self) -> bool:
        return self.fatal is None

    @property
    def scoring(self) -> ScoringService | None:
        """The default model entry's ScoringService once loaded (None before): a one-model view of
        the registry for code that predates it. New code resolves sources through ``registry``."""
        if self.registry is None:
            return None
        services = self.registry.scoring_services()
        return services.get(self.registry.default.name) or next(iter(services.values()), None)

    @property
    def ready(self) -> bool:
        generator_ok = self.settings.generator is None or self.generation is not None
        healthy = self.stalled is None and self.fatal is None
        return self.registry is not None and generator_ok and not self.draining and healthy

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

    def require_registry(self) -> Registry:
        """The reward sources by name, or NotReady (503 / UNAVAILABLE) while loading or draining.
        Every scoring door resolves what a request names through it (``registry.resolve``)."""
        if self.draining:
            raise NotReady("server is draining; retry on another replica")
        if self.registry is None:
            raise NotReady("model is still loading" if self.load_error is None else "model failed to load")
        return self.registry

    def require_scoring(self, name: str | None = None) -> ScoringService:
        """The ScoringService of model entry ``name`` (None: the default entry, or the first model
        entry when the default is an ensemble or composite): what rollouts score with. NotReady while
        loading or draining; ModelNotFound when ``name`` is not a model entry."""
        services = self.require_registry().scoring_services()
        if name:
            if name not in services:
                raise ModelNotFound(f"reward model {name!r} is not served here; models: {list(services)}")
            return services[name]
        default = self.require_registry().default.name
        if default in services:
            return services[default]
        if not services:
            raise ModelNotFound("this server holds no reward model entry to score with")
        return next(iter(services.values()))

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
