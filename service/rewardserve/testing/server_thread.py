"""A real RewardServer (HTTP + gRPC) on its own event loop in a background thread.

For tests and scripts that drive it with blocking clients (tritonclient, grpc's sync stubs, httpx):
a blocking call made from the server's own event loop would freeze the server it is waiting for.
Everything about the server is real; only the thread it runs in differs from ``rewardserve serve``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from rewardserve.app import ModelLoader, RewardServer, load_engine, load_registry
from rewardserve.config import Settings
from rewardserve.metrics import Metrics
from rewardserve.registry import Registry
from rewardserve.scoring.service import ScoringService

T = TypeVar("T")


class ServerThread:
    """``with ServerThread(settings) as srv:`` serves until the block ends.

    ``preload`` loads the model before the server starts (so it is ready at once); without it the
    server loads in the background, as ``rewardserve serve`` does. ``load_model`` replaces how the
    model is loaded (``testing.gated.gated_loader`` wraps it to hold or break its forward pass).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        preload: bool = True,
        timeout: float = 300.0,
        load_model: ModelLoader = load_engine,
    ) -> None:
        self.settings = settings
        self.load_model = load_model
        self.preload = preload
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rewardserve-server", daemon=True)
        self._server: RewardServer | None = None

    @property
    def server(self) -> RewardServer:
        if self._server is None:
            raise RuntimeError("the server is not running; use `with ServerThread(...)` or start()")
        return self._server

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def scoring(self) -> ScoringService:
        return self.server.runtime.require_scoring()

    @property
    def registry(self) -> Registry:
        return self.server.runtime.require_registry()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the server's loop and wait for its result (from any other thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(self.timeout if timeout is None else timeout)

    def start(self) -> ServerThread:
        self._thread.start()

        async def boot() -> RewardServer:
            metrics = Metrics()
            registry = await load_registry(self.settings, metrics, self.load_model) if self.preload else None
            server = RewardServer(
                self.settings, metrics=metrics, registry=registry, load_model=self.load_model
            )
            await server.start()
            return server

        try:
            self._server = self.run(boot())
        except BaseException:
            self._close_loop()
            raise
        return self

    def stop(self) -> None:
        """Drain and stop the server (as SIGTERM does), then end the thread and close the loop."""
        if self._server is not None:
            try:
                self.run(self._server.stop())
            finally:
                self._server = None
                self._close_loop()

    def _close_loop(self) -> None:
        async def finish() -> None:
            # Whatever the server left behind (client streams, watchers) ends here, not at exit.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            self.run(finish(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            if not self._thread.is_alive():
                self.loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
