"""``rewardserve serve``: every Settings field is an option (generated, see ``_settings``)."""

from __future__ import annotations

import asyncio
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

    raise typer.Exit(asyncio.run(run_server(settings)))
