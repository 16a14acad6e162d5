"""``rewardserve serve``: every Settings field is an option (generated, see ``_settings``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import Annotated, Any

import typer

from rewardserve.cli._settings import build_settings, flag, setup_logging, with_settings_options
from rewardserve.config import Settings


@with_settings_options(Settings.model_fields)
def serve(
    given: dict[str, Any],
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
) -> None:
    """Serve reward models over HTTP and gRPC (and a vLLM policy with --generator).

    One model: --model PATH. Several: --model NAME=PATH (repeatable) or --config FILE (YAML: models,
    ensembles, composites; see the README's "Several reward models")."""
    setup_logging(log_level)
    settings = build_settings(given)
    for field in ("model", "generator"):
        path = getattr(settings, field)
        if path is not None and not path.is_dir():
            typer.echo(f"error: {flag(field)} {path} is not a directory", err=True)
            raise typer.Exit(2)
    from rewardserve.errors import ConfigError
    from rewardserve.sources.spec import from_settings

    try:  # names, kinds, members, cycles, files: checked before anything loads or listens
        from_settings(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from rewardserve.app import serve as run_server

    code = asyncio.run(run_server(settings))
    exit_past_wedged_threads(code)
    raise typer.Exit(code)


def exit_past_wedged_threads(code: int) -> None:
    """Exit now if a worker thread is still running after the drain. A forward pass wedged in its
    compute thread cannot be interrupted, and the interpreter's exit would join it (thread pools
    register an atexit join) and hold the process past the pod's grace period; its callers were
    already answered 503. Idle pool threads exit on their own within moments: wait briefly for them."""
    give_up = time.monotonic() + 0.5
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, give_up - time.monotonic()))
    stuck = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if stuck:
        logging.getLogger("rewardserve").warning(
            "exiting with %d worker threads still busy (%s)", len(stuck), ", ".join(stuck[:4])
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
