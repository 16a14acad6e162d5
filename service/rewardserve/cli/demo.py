"""``rewardserve demo``: build (or find) the demo reward model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rewardserve.cli._settings import build_settings, setup_logging


def demo(
    out: Annotated[Path | None, typer.Option(help="Build into this directory instead of the cache.")] = None,
) -> None:
    """Build (or find in the cache) the demo reward model and print where it is."""
    setup_logging("info")
    from rewardserve.demo.build import build_demo_model, ensure_demo_model

    if out is not None:
        build_demo_model(out)
        typer.echo(str(out))
    else:
        typer.echo(str(ensure_demo_model(build_settings({}).cache_dir)))
