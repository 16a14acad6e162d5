"""The process: build the services, run the servers in one event loop, drain on SIGTERM.

Lifecycle: the HTTP server listens at once (liveness answers, readiness says "loading"), the model
loads and warms up in a worker thread, then readiness flips. On SIGTERM/SIGINT: readiness goes 503
and new work is refused, in-flight calls finish (bounded by drain_timeout_s), the servers stop, the
batcher closes, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import torch
import uvicorn

from rewardserve.api.grpc import GrpcServer
from rewardserve.api.http import build_http_app
from rewardserve.config import Settings
from rewardserve.demo.paths import resolve_model_path
from rewardserve.metrics import Metrics
from rewardserve.registry import Registry
from rewardserve.runtime import Runtime
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.service import ScoringModel, ScoringService

if TYPE_CHECKING:  # imported only with --generator: a scoring-only server never loads vllm
    from rewardserve.generation.service import GenerationService

log = logging.getLogger("rewardserve")


async def load_engine(settings: Settings) -> RewardEngine:
    """Load and warm up the reward model (blocking work runs in a thread)."""
    path = await asyncio.to_thread(resolve_model_path, settings)
    engine = await asyncio.to_thread(RewardEngine.load, path, settings)
    if settings.warmup:
        await asyncio.to_thread(engine.warmup)
    return engine


#: How the scoring model is loaded; tests pass one that wraps the engine (see ScoringModel).
ModelLoader = Callable[[Settings], Awaitable[ScoringModel]]


async def load_scoring(
    settings: Settings, metrics: Metrics, load_model: ModelLoader = load_engine
) -> ScoringService:
    """Load the model, then build and start the scoring service over it."""
    service = ScoringService(await load_model(settings), settings, metrics)
    await service.start()
    info = service.info
    log.info(
        "model %r ready: %s on %s/%s, max %d tokens, %s batches, %s kernels, %d at once x %d threads",
        info.name,
        info.architecture,
        info.device,
        info.dtype,
        info.max_input_tokens,
        info.batch_strategy,
        info.kernels,
        service.workers,
        torch.get_num_threads(),
    )
    return service


async def load_registry(
    settings: Settings, metrics: Metrics, generation: GenerationService | None
) -> Registry:
    """Every declared source (--config, several --model, --reward-fn), built and started: models
    load and warm up, reward functions start their workers, judges check their choices."""
    from rewardserve.sources import spec

    entries = await asyncio.to_thread(spec.from_settings, settings)
    registry = await Registry.build(entries, settings, metrics=metrics, generation=generation)
    try:
        await registry.start()
    except BaseException:
        await registry.close(drain=False)
        raise
    for card in registry.cards():
        log.info("reward source %r ready (%s)", card["id"], card.get("kind", "model"))
    return registry


def declares_registry(settings: Settings) -> bool:
    """More than one model, a config file, or reward functions: a registry rather than one model."""
    return settings.config is not None or bool(settings.models) or bool(settings.reward_fn)


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: ours drains first, and uvicorn's would re-raise
    SIGTERM after shutdown, so the process would die by signal instead of exiting 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _freeze_heap() -> None:
    """Move every object alive after start-up (torch, transformers, vLLM, the models: millions of
    them) out of the garbage collector's reach. A full collection walks the whole heap with the GIL
    held; serving allocates fast enough to trigger them, and one took 0.5 s, stalling the event loop
    mid-generation. Nearly all of what start-up built lives as long as the process; a frozen object
    that later becomes part of an unreachable cycle is not freed (vLLM's API server freezes the same way)."""
    gc.collect()
    gc.freeze()
    log.info("start-up heap frozen: %d objects the garbage collector no longer scans", gc.get_freeze_count())


class RewardServer:
    """HTTP and gRPC servers over one Runtime, in the caller's event loop.

    ``metrics`` is the process's one Metrics: the services record into it and /metrics renders it.
    Services built by the caller (``scoring``, ``generation``) must have been given the same one.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        scoring: ScoringService | None = None,
        generation: GenerationService | None = None,
        load_model: ModelLoader = load_engine,
        freeze_heap: bool = False,
    ) -> None:
        metrics = Metrics() if metrics is None else metrics
        for service in (scoring, generation):
            if service is not None and service.metrics is not metrics:
                raise ValueError(
                    f"{type(service).__name__} records into another Metrics than this server exports; "
                    "build it with the Metrics passed as RewardServer(metrics=...)"
                )
        self.settings = settings
        self._freeze_heap = freeze_heap
        self._load_model = load_model
        self.runtime = Runtime(settings, metrics, scoring=scoring, generation=generation)
        self._sock = _bind(settings.host, settings.port)
        self.http_port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            build_http_app(self.runtime),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
            timeout_keep_alive=30,
        )
        self._http = _UvicornServer(config)
        self._grpc = GrpcServer(self.runtime)
        self.grpc_port = 0  # known once start() has bound it
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self.exit_code = 0

    async def start(self) -> None:
        """Start listening; load the model in the background unless one was given."""
        # gRPC first: a taken port fails here, before anything else runs.
        try:
            self.grpc_port = await self._grpc.start()
        except OSError:
            self._sock.close()
            raise
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[self._sock]), name="http"))
        if self.runtime.scoring is None or self._generator_missing():
            self._tasks.append(asyncio.create_task(self._load(), name="load"))
        elif self.runtime.ready:
            await self._now_serving()
        while not self._http.started:  # uvicorn exposes no event for this
            if self._tasks[0].done():
                await self._tasks[0]  # re-raise the startup failure
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def _now_serving(self) -> None:
        """Every model is loaded: freeze the start-up heap (when asked) and report gRPC health
        SERVING (HTTP readiness reads the runtime)."""
        if self._freeze_heap:
            _freeze_heap()
        await self._grpc.set_serving()

    def _generator_missing(self) -> bool:
        return self.settings.generator is not None and self.runtime.generation is None

    async def _load(self) -> None:
        try:
            if self.runtime.scoring is None and declares_registry(self.settings):
                # The generator first: judges with `engine: generator` are built on it.
                await self._start_generation()
                registry = await load_registry(self.settings, self.runtime.metrics, self.runtime.generation)
                self.runtime.registry = registry
                services = registry.scoring_services()
                self.runtime.scoring = services.get(registry.default.name) or next(
                    iter(services.values()), None
                )
            if self.runtime.scoring is None and self.runtime.registry is None:
                scoring = await load_scoring(self.settings, self.runtime.metrics, self._load_model)
                self.runtime.scoring = scoring
            await self._start_generation()
            if self.runtime.ready:
                await self._now_serving()
        except Exception as exc:
            self.runtime.load_error = str(exc)
            log.error("model failed to load: %s", exc)
            self.exit_code = 1
            self.request_stop()

    async def _start_generation(self) -> None:
        if self._generator_missing() and not self.runtime.draining:
            from rewardserve.generation.service import start_generation

            self.runtime.generation = await start_generation(self.settings, self.runtime.metrics)

    def request_stop(self) -> None:
        """Begin a graceful drain (idempotent; safe from a signal handler)."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._drain_and_stop(), name="drain")
            self._stop_requested.set()

    async def _drain_and_stop(self) -> None:
        self.runtime.draining = True
        await self._grpc.begin_drain()  # health NOT_SERVING; new gRPC work gets UNAVAILABLE
        scoring = self.runtime.scoring
        in_flight = (scoring.in_flight if scoring is not None else 0, self._generations_in_flight())
        timeout = self.settings.drain_timeout_s
        if scoring is not None and not await scoring.wait_idle(timeout):
            log.warning("drain timeout (%.0fs): %d calls still in flight", timeout, scoring.in_flight)
        generation = self.runtime.generation
        if generation is not None and not await generation.wait_idle(timeout):
            log.warning("drain timeout (%.0fs): %d generations in flight", timeout, generation.in_flight)
        self._http.should_exit = True
        # Scoring work is drained by now: the grace covers writing the last answers and streams
        # ending themselves (a health Watch never ends on its own; it is cut after the grace).
        grpc_stop = asyncio.create_task(self._grpc.stop(grace=min(2.0, timeout)), name="grpc-stop")
        await asyncio.gather(*self._tasks, grpc_stop, return_exceptions=True)
        if self.runtime.registry is not None:  # closes its models' services, function workers, judges
            await self.runtime.registry.close(drain=True, timeout=timeout)
        elif scoring is not None:
            await scoring.close(drain=True, timeout=timeout)
        # Read again: a load still running when the drain began has finished by now (gather above),
        # and an engine it started must be stopped too, or its processes outlive us.
        if self.runtime.generation is not None:
            await self.runtime.generation.close()
        if self._freeze_heap:
            # Hand the start-up heap back to the collector: objects left frozen are never freed at
            # exit, and native extensions with leak checks (triton's nanobind bindings, imported by
            # torch._dynamo through transformers) print ~40 lines of "leaked ..." at interpreter exit.
            gc.unfreeze()
        log.info("shutdown complete: drained %d scoring and %d generation calls in flight", *in_flight)

    def _generations_in_flight(self) -> int:
        generation = self.runtime.generation
        return generation.in_flight if generation is not None else 0

    async def stop(self) -> None:
        self.request_stop()
        assert self._stopping is not None
        await self._stopping

    async def wait(self) -> int:
        """Run until stopped; returns the process exit code."""
        await self._stop_requested.wait()
        assert self._stopping is not None
        await self._stopping
        return self.exit_code


async def serve(settings: Settings) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit code."""
    server = RewardServer(settings, freeze_heap=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.start()
    except OSError as exc:  # a port that cannot be bound: say which, without a traceback
        log.error("%s", exc)
        return 1
    log.info("HTTP on http://%s:%d", settings.host, server.http_port)
    log.info("gRPC on %s:%d", settings.host, server.grpc_port)
    return await server.wait()
