"""What runs inside a reward-function worker process: load the function, then answer calls.

Started by ``pool.WorkerPool`` with the ``spawn`` context (a fresh interpreter: the server holds
vLLM, torch and threads, which ``fork`` would copy in an unsafe state). This module imports nothing
heavy; the target's own imports happen here, in the worker, never in the server.

Messages on the pipe (pickled tuples):
  parent -> worker: ``(call_id, kwargs)`` to call the function, ``None`` to exit.
  worker -> parent: ``("ready",)`` or ``("load_error", message)`` once at start, then
  ``(call_id, "ok", score, extras)`` or ``(call_id, "error", message)`` per call.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import numbers
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rewardserve.errors import ConfigError

BUILTINS = {
    "math": "rewardserve.functions.builtins:math_verify_reward",
    "exact": "rewardserve.functions.builtins:exact_match",
    "regex": "rewardserve.functions.builtins:regex_match",
    "json": "rewardserve.functions.builtins:json_valid",
}
# Fields of ``details[i]`` that a function's extra fields may not overwrite.
RESERVED_EXTRAS = frozenset(
    {
        "score", "reward", "status", "mask", "error", "tokens", "truncated", "advantage", "raw",
        "members", "components", "objectives", "step_scores", "mean", "std", "min", "conservative",
    }
)  # fmt: skip
MAX_MESSAGE = 500


def resolve_target(target: str) -> str:
    """A built-in name -> its ``module:function``; anything else is returned as given."""
    return BUILTINS.get(target, target)


def load_target(target: str) -> Callable[..., Any]:
    """Import ``module:function`` or ``path/to/file.py:function`` (a built-in name also works)."""
    spec = resolve_target(target)
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(
            f"reward function target {target!r} is not `module:function` or `path/to/file.py:function` "
            f"(or a built-in: {sorted(BUILTINS)})"
        )
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"reward function file not found: {path}")
        # The file's folder goes on sys.path so that it can import its sibling modules.
        sys.path.insert(0, str(path.parent.resolve()))
        name = f"rewardserve_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise ConfigError(
                f"cannot import module {where!r} for reward function {target!r}: "
                f"{type(exc).__name__}: {exc}; is it installed, or on PYTHONPATH?"
            ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where!r} has no function {attr!r}")
    preload = getattr(module, "PRELOAD", {}) if where == "rewardserve.functions.builtins" else {}
    if attr in preload:
        importlib.import_module(preload[attr])
    return fn  # type: ignore[no-any-return]


def check_result(value: Any) -> tuple[float, dict[str, Any] | None]:
    """A function's return value -> (score, extras). Raises ValueError with a message for the user."""
    extras: dict[str, Any] | None = None
    if isinstance(value, dict):
        if "score" not in value:
            raise ValueError(f'returned a dict without "score" (keys: {sorted(map(str, value))[:10]})')
        extras = {k: v for k, v in value.items() if k != "score"}
        bad_keys = [k for k in extras if not isinstance(k, str) or k in RESERVED_EXTRAS]
        if bad_keys:
            raise ValueError(
                f"returned extra field(s) {bad_keys} that clash with the answer's own fields or are not "
                "strings; rename them"
            )
        try:
            json.dumps(extras, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"returned extra fields that are not JSON-able: {exc}") from None
        value = value["score"]
    # numbers.Real covers int, float, bool and numpy scalars; complex, str and None are refused.
    if not isinstance(value, numbers.Real):
        raise ValueError(f'returned {type(value).__name__}, expected a float or a dict with a float "score"')
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"returned a non-finite score ({score})")
    return score, extras or None


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _exit_with_parent(parent_pid: int) -> None:
    """Exit when the server process is gone, even in the middle of a hung call: no orphans."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(3)


def main(conn: Connection, target: str, kwargs: dict[str, Any], parent_pid: int) -> None:
    """The worker's loop (the Process target)."""
    # Ctrl-C goes to the whole process group; the server decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    try:
        fn = load_target(target)
    except ConfigError as exc:
        conn.send(("load_error", str(exc)))
        return
    except Exception as exc:  # anything else at import time is still the target's problem
        conn.send(("load_error", f"loading {target!r} failed: {type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server closed the pipe
        if message is None:
            return
        call_id, call_kwargs = message
        reply: tuple[Any, ...]
        try:
            value = fn(**call_kwargs, **kwargs)
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            reply = (call_id, "error", _short(detail))
        else:
            try:
                score, extras = check_result(value)
                reply = (call_id, "ok", score, extras)
            except ValueError as exc:
                reply = (call_id, "error", _short(f"the function {exc}"))
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. extras that pickle cannot carry
            conn.send((call_id, "error", _short(f"result could not be sent back: {exc}")))
