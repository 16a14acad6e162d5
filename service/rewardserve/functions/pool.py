"""A pool of worker processes that run one reward function, with a hard per-call timeout.

Why processes, and why killed: a verifier that hangs (sympy on a pathological expression, a unit
test with an infinite loop) cannot be interrupted from another thread, and signal-based timeouts only
work on a process's main thread (the failure trainers hit when a verifier's timeout silently turns
every score into 0). So each call runs in a worker process; one past its timeout is SIGKILLed and a
fresh worker takes its place, while the other workers keep serving other calls.

Everything here runs on the server's event loop: replies are read with ``loop.add_reader`` on each
worker's pipe, so no thread waits on a worker. Workers are started with ``spawn`` (vLLM and torch make
``fork`` unsafe) and exit on their own when the server process disappears (see worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

from rewardserve.errors import ConfigError, Draining
from rewardserve.functions import worker as worker_main

log = logging.getLogger(__name__)

# How long a worker gets to import its target before start-up fails (sympy alone takes seconds on a
# busy machine), and how long a closing worker gets to exit before it is killed.
START_TIMEOUT_S = 120.0
EXIT_GRACE_S = 2.0


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CallResult:
    """One call's outcome: ``score`` (and ``extras``) when ok, ``error`` otherwise."""

    status: Literal["ok", "timeout", "error"]
    score: float | None = None
    extras: dict[str, Any] | None = None
    error: str | None = None


class _Worker:
    """One worker process, its pipe, and the call it runs (at most one)."""

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.ready: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self.reply: asyncio.Future[tuple[Any, ...]] | None = None
        self.call_id: int | None = None
        self.dead = False

    @property
    def pid(self) -> int | None:
        return self.process.pid  # type: ignore[no-any-return]


class WorkerPool:
    """``workers`` processes running ``target`` (see worker.load_target); ``call`` runs it once."""

    def __init__(
        self,
        target: str,
        *,
        workers: int | None = None,
        timeout_s: float = 10.0,
        kwargs: Mapping[str, Any] | None = None,
        name: str = "fn",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.target = target
        self.size = workers or default_workers()
        if self.size < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.timeout_s = timeout_s
        self.kwargs = dict(kwargs or {})
        self.name = name
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: set[_Worker] = set()
        self._processes: list[Any] = []  # every process ever started: close() makes sure all are gone
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._calls = 0
        self._no_calls = asyncio.Event()
        self._no_calls.set()
        self._started = False
        self._closed = False
        self.replaced = 0  # workers killed or found dead and started again (tests, logs)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every worker and wait until each has loaded the target. Raises ConfigError (and
        stops what it started) when the target cannot be loaded."""
        if self._started:
            return
        self._started = True
        workers = [self._spawn() for _ in range(self.size)]
        try:
            await asyncio.gather(*(self._wait_ready(w) for w in workers))
        except BaseException:
            await self.close(drain=False)
            raise
        for w in workers:
            self._idle.put_nowait(w)

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new calls; with ``drain``, let admitted calls finish (within ``timeout``); then stop
        every worker (asked to exit, killed after a grace period), so none is left behind."""
        if self._closed and not self._workers:
            return
        self._closed = True
        if drain and self._calls:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_calls.wait(), timeout)
        self._idle.put_nowait(None)  # wakes callers waiting for a worker: they raise Draining
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        workers = list(self._workers)
        for w in workers:
            self._fail_call(w, ("closed",))
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(None)
        await asyncio.gather(*(self._reap(w, EXIT_GRACE_S) for w in workers))
        for process in self._processes:  # killed ones whose reaping task was cancelled above
            if process.is_alive():
                process.kill()
            await asyncio.to_thread(process.join, 5.0)
        self._processes.clear()

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (tests check that none is left after close)."""
        return [w.pid for w in self._workers if w.pid is not None and not w.dead]

    @property
    def in_flight(self) -> int:
        return self._calls

    # ------------------------------------------------------------------ calls
    async def call(
        self, kwargs: Mapping[str, Any], *, timeout_s: float | None = None, deadline: float | None = None
    ) -> CallResult:
        """Run the function once with ``kwargs``. Never raises for the function's own failures: they
        come back as ``status`` "error" or "timeout". ``deadline`` (time.monotonic()) bounds the wait
        for a free worker and the call. Raises Draining once the pool is closing."""
        if self._closed:
            raise Draining("server is draining")
        if not self._started:
            raise RuntimeError("WorkerPool.start() was not awaited")
        self._calls += 1
        self._no_calls.clear()
        try:
            return await self._call(dict(kwargs), timeout_s or self.timeout_s, deadline)
        finally:
            self._calls -= 1
            if not self._calls:
                self._no_calls.set()

    async def _call(self, kwargs: dict[str, Any], timeout_s: float, deadline: float | None) -> CallResult:
        worker = await self._acquire(deadline)
        if worker is None:
            return CallResult("timeout", error="the request's deadline passed before a worker was free")
        limit = timeout_s
        by_deadline = False
        if deadline is not None and deadline - time.monotonic() < limit:
            limit, by_deadline = max(0.0, deadline - time.monotonic()), True
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        reply: asyncio.Future[tuple[Any, ...]] = loop.create_future()
        worker.reply, worker.call_id = reply, call_id
        try:
            worker.conn.send((call_id, kwargs))
        except (OSError, ValueError):
            self._on_death(worker)  # died while idle: the reply gets "died" once it is reaped
        except Exception as exc:  # kwargs that cannot be pickled: this input's problem only
            worker.reply, worker.call_id = None, None
            self._release(worker)
            return CallResult("error", error=f"could not send the input to the worker: {exc}")
        try:
            async with asyncio.timeout(limit):
                message = await asyncio.shield(reply)
        except TimeoutError:
            self._kill_and_replace(worker)
            why = "the request's deadline passed" if by_deadline else f"timed out after {timeout_s:g}s"
            return CallResult("timeout", error=f"{why}; the worker was killed and replaced")
        except asyncio.CancelledError:
            # The caller went away: let the call end (or time out) in the background, then reuse the
            # worker, instead of killing a process that is probably about to finish.
            self._background(self._reclaim(worker, reply, time.monotonic() + limit))
            raise
        return self._finish(worker, message)

    def _finish(self, worker: _Worker, message: tuple[Any, ...]) -> CallResult:
        kind = message[0]
        if kind == "died":
            return CallResult(
                "error",
                error=f"the worker process died (exit code {message[1]}) while running this input; "
                "it was replaced",
            )
        if kind == "closed":
            raise Draining("server is draining")
        worker.reply, worker.call_id = None, None
        self._release(worker)
        if message[1] == "ok":
            return CallResult("ok", score=float(message[2]), extras=message[3])
        return CallResult("error", error=str(message[2]))

    async def _reclaim(self, worker: _Worker, reply: asyncio.Future[tuple[Any, ...]], until: float) -> None:
        try:
            async with asyncio.timeout(max(0.0, until - time.monotonic())):
                message = await reply
        except TimeoutError:
            self._kill_and_replace(worker)
            return
        if message[0] not in ("died", "closed"):
            worker.reply, worker.call_id = None, None
            self._release(worker)

    async def _acquire(self, deadline: float | None) -> _Worker | None:
        """A live idle worker; None when the deadline passed first."""
        while True:
            try:
                async with asyncio.timeout_at(None if deadline is None else _loop_time(deadline)):
                    worker = await self._idle.get()
            except TimeoutError:
                return None
            if worker is None:
                self._idle.put_nowait(None)  # pass the wake-up on to the next waiter
                raise Draining("server is draining")
            if not worker.dead:
                return worker

    def _release(self, worker: _Worker) -> None:
        if not worker.dead and not self._closed:
            self._idle.put_nowait(worker)

    # ------------------------------------------------------------------ processes
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main.main,
            args=(child, self.target, self.kwargs, os.getpid()),
            name=f"rewardserve-fn-{self.name}",
            daemon=True,  # multiprocessing also stops it if the server exits without close()
        )
        process.start()
        self._processes = [p for p in self._processes if p.is_alive()]  # is_alive reaps exited ones
        self._processes.append(process)
        child.close()
        w = _Worker(process, parent)
        self._workers.add(w)
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_readable, w)
        return w

    async def _wait_ready(self, w: _Worker) -> None:
        try:
            message = await asyncio.wait_for(asyncio.shield(w.ready), START_TIMEOUT_S)
        except TimeoutError:
            raise ConfigError(
                f"reward function {self.name!r}: a worker did not load {self.target!r} within "
                f"{START_TIMEOUT_S:.0f}s"
            ) from None
        if message[0] == "load_error":
            raise ConfigError(f"reward function {self.name!r}: {message[1]}")
        if message[0] != "ready":
            raise ConfigError(
                f"reward function {self.name!r}: the worker exited while loading {self.target!r}"
            )

    def _on_readable(self, w: _Worker) -> None:
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            self._on_death(w)
            return
        if message[0] in ("ready", "load_error"):
            if not w.ready.done():
                w.ready.set_result(message)
            return
        if w.reply is not None and not w.reply.done() and message[0] == w.call_id:
            w.reply.set_result(message)
        # Anything else is the late answer of a call that already timed out: dropped.

    def _on_death(self, w: _Worker) -> None:
        """The worker's pipe closed: it exited or was killed. Answer its call, start a replacement."""
        if w.dead:
            return
        w.dead = True
        self._stop_reading(w)
        self._workers.discard(w)
        self._background(self._after_death(w))

    async def _after_death(self, w: _Worker) -> None:
        # The pipe closes a moment before the process can be reaped: wait for it, for the exit code.
        await asyncio.to_thread(w.process.join, 5.0)
        code = w.process.exitcode
        if not w.ready.done():
            w.ready.set_result(("died", code))
        self._fail_call(w, ("died", code))
        await self._reap(w, 0.0)
        if not self._closed:
            log.warning(
                "reward function %r: worker %s exited (code %s); starting another", self.name, w.pid, code
            )
            await self._replace()

    def _kill_and_replace(self, w: _Worker) -> None:
        if w.dead:
            return
        w.dead = True
        self._stop_reading(w)
        with contextlib.suppress(OSError):
            w.process.kill()
        self._fail_call(w, ("died", "killed"))
        self._workers.discard(w)
        self._background(self._reap(w, 0.0))
        if not self._closed:
            self._background(self._replace())

    async def _replace(self) -> None:
        self.replaced += 1
        w = self._spawn()
        try:
            await self._wait_ready(w)
        except ConfigError as exc:  # loaded fine at start-up; now fails (file edited, disk gone)
            log.error("%s; the pool has one worker fewer", exc)
            self._kill_and_replace_quietly(w)
            return
        self._release(w)

    def _kill_and_replace_quietly(self, w: _Worker) -> None:
        w.dead = True
        self._stop_reading(w)
        with contextlib.suppress(OSError):
            w.process.kill()
        self._workers.discard(w)
        self._background(self._reap(w, 0.0))

    def _fail_call(self, w: _Worker, message: tuple[Any, ...]) -> None:
        if w.reply is not None and not w.reply.done():
            w.reply.set_result(message)

    def _stop_reading(self, w: _Worker) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(w.conn.fileno())

    async def _reap(self, w: _Worker, grace: float) -> None:
        """Join the process (in a thread: join blocks), killing it after ``grace`` seconds."""
        self._stop_reading(w)
        self._workers.discard(w)
        w.dead = True
        await asyncio.to_thread(w.process.join, grace)
        if w.process.is_alive():
            with contextlib.suppress(OSError):
                w.process.kill()
            await asyncio.to_thread(w.process.join, 5.0)
        with contextlib.suppress(OSError):
            w.conn.close()

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the event loop's clock (the same clock on Linux, but not promised)."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
