"""The process: build the services, run the servers in one event loop, drain on SIGTERM.

Lifecycle: the HTTP server listens at once (liveness answers, readiness says "loading"), the model
loads and warms up in worker threads (imports included: the event loop keeps answering health), then
readiness flips. On SIGTERM/SIGINT: readiness goes 503 and new work is refused, in-flight calls
finish, whatever still runs when the budget is nearly spent is answered 503, the servers stop, and
the process exits 0. Every wait of the drain runs against ONE budget, drain_timeout_s.

A watchdog task checks the engines every second (docs/deploy.md, "Health"): a forward or an engine
step running past watchdog_timeout_s turns readiness (HTTP and gRPC) to NOT_SERVING until it ends; a
dead vLLM engine core or a dead batcher loop is fatal: liveness fails too, what is in flight is
failed at once, and the process exits 1 so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import uvicorn

from rewardserve.api.grpc import GrpcServer
from rewardserve.api.http import build_http_app
from rewardserve.api.http.protocol import uvicorn_options
from rewardserve.config import Settings
from rewardserve.demo.paths import resolve_model_path
from rewardserve.errors import ConfigError
from rewardserve.metrics import Metrics
from rewardserve.registry import Registry
from rewardserve.runtime import Runtime
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.service import ScoringModel, ScoringService
from rewardserve.sources.entry import Entry

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
    settings: Settings,
    metrics: Metrics,
    load_model: ModelLoader = load_engine,
    generation: GenerationService | None = None,
    entries: Sequence[Entry] | None = None,
) -> Registry:
    """Every declared reward source (--model NAME=PATH, --config FILE, or the demo model), loaded,
    warmed up and started. Raises ConfigError for a declaration that cannot be served.

    Reward functions start their workers and judges check their choices; judges with
    ``engine: generator`` are built on ``generation``. A custom ``load_model`` (tests: a gated engine)
    serves that one model under --model-name instead. ``entries``: the declaration, when already parsed.
    """
    if load_model is load_engine:
        if entries is None:
            entries = await declared_entries(settings)
        registry = await Registry.build(entries, settings, metrics=metrics, generation=generation)
        try:
            await registry.start()
        except BaseException:
            await registry.close(drain=False)
            raise
    else:
        from rewardserve.sources.model import ModelSource

        service = await load_scoring(settings, metrics, load_model)
        registry = Registry([ModelSource(service.name, service)])
    for card in registry.cards():
        log.info("reward source %r ready: %s", card["id"], _describe(card))
    return registry


async def declared_entries(settings: Settings) -> list[Entry]:
    """The declared sources, parsed and checked (ConfigError otherwise). Parsing reads the YAML and
    normalization files: off the event loop, like the loading."""
    from rewardserve.sources import spec

    return await asyncio.to_thread(spec.from_settings, settings)


def _describe(card: dict[str, object]) -> str:
    """One log line's worth of a card (whatever the kind: every card has "kind")."""
    keys = ("kind", "architecture", "device", "dtype", "max_input_tokens", "batch_strategy", "kernels")
    shown = ", ".join(f"{k}={card[k]}" for k in keys if card.get(k) is not None)
    members = card.get("members") or card.get("weights")
    return shown + (f", over {members}" if members else "")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: ours drains first, and uvicorn's would re-raise
    SIGTERM after shutdown, so the process would die by signal instead of exiting 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns on TCP_NODELAY only for sockets whose proto says
    # TCP, and accepted connections inherit it. Without it Nagle held each response's body (written
    # after its head) until the client's delayed ACK: ~40 ms on every keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
    Services built by the caller (``registry``, ``scoring``, ``generation``) must have been given
    the same one. ``scoring`` is a one-model registry's service (kept for callers that built one).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        scoring: ScoringService | None = None,
        registry: Registry | None = None,
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
        if scoring is not None:
            if registry is not None:
                raise ValueError("give RewardServer either registry= or scoring=, not both")
            from rewardserve.sources.model import ModelSource

            registry = Registry([ModelSource(scoring.name, scoring)])
        if registry is not None:
            for service in registry.scoring_services().values():
                if service.metrics is not metrics:
                    raise ValueError(
                        "a registry model records into another Metrics than this server exports; "
                        "build the registry with the Metrics passed as RewardServer(metrics=...)"
                    )
        self.runtime = Runtime(settings, metrics, registry=registry, generation=generation)
        self._sock = _bind(settings.host, settings.port)
        self.http_port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            build_http_app(self.runtime),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
            timeout_keep_alive=30,
            **uvicorn_options(settings),  # connection limits, TLS (api/http/protocol.py)
        )
        self._http = _UvicornServer(config)
        self._grpc = GrpcServer(self.runtime)
        self.grpc_port = 0  # known once start() has bound it
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self._fatal = False
        self._watchdog: asyncio.Task[None] | None = None
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
        self._watchdog = asyncio.create_task(self._watch(), name="watchdog")
        if self.runtime.registry is None or self._generator_missing():
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
            if self.runtime.registry is None:
                entries = None
                if self._load_model is load_engine:
                    entries = await declared_entries(self.settings)
                    if any(e.kind == "judge" for e in entries):
                        # Judges with `engine: generator` are built on it: the generator first.
                        await self._start_generation()
                # Otherwise the reward models first: they load in seconds, the engine in tens.
                self.runtime.registry = await load_registry(
                    self.settings, self.runtime.metrics, self._load_model, self.runtime.generation, entries
                )
            await self._start_generation()
            if self.runtime.ready:
                await self._now_serving()
        except ConfigError as exc:  # a declaration that cannot be served: say what to fix, exit 2
            self.runtime.load_error = str(exc)
            log.error("invalid model declaration: %s", exc)
            self.exit_code = 2
            self.request_stop()
        except Exception as exc:
            self.runtime.load_error = str(exc)
            log.error("model failed to load: %s", exc)
            self.exit_code = 1
            self.request_stop()

    async def _start_generation(self) -> None:
        if self._generator_missing() and not self.runtime.draining:
            # Importing vllm takes seconds of CPU (3 s measured on this loop): in a thread, so
            # health keeps answering. vllm_engine is what imports vllm; service imports it lazily.
            await asyncio.to_thread(importlib.import_module, "rewardserve.generation.vllm_engine")
            module = importlib.import_module("rewardserve.generation.service")
            self.runtime.generation = await module.start_generation(self.settings, self.runtime.metrics)

    def request_stop(self) -> None:
        """Begin a graceful drain (idempotent; safe from a signal handler)."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._drain_and_stop(), name="drain")
            self._stop_requested.set()

    def fail(self, reason: str) -> None:
        """Something the process cannot recover from: liveness fails, in-flight work is failed at
        once (no drain wait), and the process exits 1 so the orchestrator restarts it."""
        if self.runtime.fatal is None:
            log.error("fatal: %s; failing in-flight work and exiting", reason)
            self.runtime.fatal = reason
            self.exit_code = 1
            self._fatal = True
            self.request_stop()

    async def _watch(self) -> None:
        """The watchdog (module docstring): fatal faults end the process, stalls flip readiness."""
        limit = self.settings.watchdog_timeout_s
        while not self.runtime.draining:
            await asyncio.sleep(min(1.0, limit / 4))
            registry, generation = self.runtime.registry, self.runtime.generation
            # Every model entry's batcher (several models: each has its own).
            services = registry.scoring_services() if registry is not None else {}
            dead = [(n, s.batcher.dead) for n, s in services.items() if s.batcher.dead is not None]
            if dead:
                name, why = dead[0]
                self.fail(f"the scoring batcher died ({name!r}: {why})")
                return
            if generation is not None and generation.engine_dead:
                self.fail("the vLLM engine core process died")
                return
            stuck = []
            for name, service in services.items():
                if (seconds := service.batcher.stalled_seconds()) > limit:
                    stuck.append(f"a forward pass of {name!r} has run {seconds:.0f}s")
            if generation is not None and (seconds := generation.stalled_seconds()) > limit:
                stuck.append(f"the generation engine has produced nothing for {seconds:.0f}s")
            stalled = "; ".join(stuck) or None
            if stalled == self.runtime.stalled or (stalled and self.runtime.stalled):
                continue
            self.runtime.stalled = stalled
            if stalled is not None:
                log.error("watchdog: %s (watchdog_timeout_s=%s): not ready until it ends", stalled, limit)
                await self._grpc.set_not_serving()
            elif self.runtime.ready:
                log.warning("watchdog: the engine is making progress again; ready")
                await self._grpc.set_serving()

    async def _drain_and_stop(self) -> None:
        loop = asyncio.get_running_loop()
        budget = 0.0 if self._fatal else self.settings.drain_timeout_s
        end = loop.time() + budget
        # Kept back from waiting: the time to answer what still runs with 503 and stop the servers.
        reserve = min(1.0, budget / 5)

        def left(keep: float = 0.0) -> float:
            return max(0.0, end - keep - loop.time())

        self.runtime.draining = True
        await self._grpc.begin_drain()  # health NOT_SERVING; new gRPC work gets UNAVAILABLE
        registry = self.runtime.registry
        in_flight = (registry.in_flight if registry is not None else 0, self._generations_in_flight())
        if registry is not None and not await registry.wait_idle(left(reserve)):
            log.warning("drain budget (%.1fs) spent: %d calls still in flight", budget, registry.in_flight)
        generation = self.runtime.generation
        if generation is not None and not await generation.wait_idle(left(reserve)):
            log.warning("drain budget (%.1fs) spent: %d generations in flight", budget, generation.in_flight)
        if registry is not None:
            # Whatever still runs (a wedged forward included) is answered 503 now, while the
            # servers can still write it: a clean "retry elsewhere", not a reset connection.
            await registry.close(drain=False)
        if generation is not None and (self._fatal or generation.in_flight):
            await generation.abort_all()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._http.config.timeout_graceful_shutdown = max(0.1, left())  # type: ignore[assignment]
        self._http.should_exit = True
        # The grace covers writing the last answers and streams ending themselves (a health Watch
        # never ends on its own; it is cut after the grace).
        grace = max(0.1, min(2.0, left()))
        grpc_stop = asyncio.create_task(self._grpc.stop(grace=grace), name="grpc-stop")
        watchdog = [] if self._watchdog is None else [self._watchdog]
        await asyncio.gather(*self._tasks, grpc_stop, *watchdog, return_exceptions=True)
        if registry is None and self.runtime.registry is not None:
            # A registry still loading when the drain began is loaded by now (gather above).
            await self.runtime.registry.close(drain=False)
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


async def serve(settings: Settings, load_model: ModelLoader = load_engine) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit code. ``load_model``: see ModelLoader."""
    server = RewardServer(settings, freeze_heap=True, load_model=load_model)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.start()
    except OSError as exc:  # a port that cannot be bound: say which, without a traceback
        log.error("%s", exc)
        return 1
    tls = settings.tls_cert is not None
    mtls = " (client certificates required)" if settings.tls_client_ca is not None else ""
    log.info("HTTP on %s://%s:%d%s", "https" if tls else "http", settings.host, server.http_port, mtls)
    log.info("gRPC on %s:%d%s%s", settings.host, server.grpc_port, " (TLS)" if tls else "", mtls)
    if not settings.auth_enabled:
        log.warning("no API key configured: every route is open to anyone who can reach the ports")
    return await server.wait()
