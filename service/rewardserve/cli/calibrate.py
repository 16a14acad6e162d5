"""``rewardserve calibrate``: mean and std of a reward model over a reference set, for ``normalize``.

The model options (device, dtype, batch strategy, limits) are generated from Settings, like ``serve``'s.
Imports nothing heavy at module level, so ``rewardserve --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from rewardserve.cli._settings import build_settings, setup_logging, with_settings_options

# What calibrate uses of Settings; the model itself is --model (required, one path).
_MODEL_FIELDS = (
    "device",
    "dtype",
    "batch_strategy",
    "max_batch_tokens",
    "max_input_tokens",
    "trust_remote_code",
    "torch_threads",
    "score_activation",
    "objective",
)


@with_settings_options(_MODEL_FIELDS, panel="Model")
def calibrate(
    given: dict[str, Any],
    model: Annotated[Path, typer.Option("--model", help="Reward model directory to calibrate.")],
    data: Annotated[
        Path,
        typer.Option(
            help="JSONL reference set, one input a line in /v1/score's shapes: {prompt, response}, "
            "{messages}, {text} (or {query}), or {prompt, steps} for a process reward model."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write {mean, std, ...} (JSON).")],
    kind: Annotated[
        str | None, typer.Option(help="model | prm (default: prm for token-classification models).")
    ] = None,
    step_separator: Annotated[str, typer.Option(help="PRM step tag (one token).")] = "<extra_0>",
    step_reduce: Annotated[str, typer.Option(help="PRM: min | last | mean | prod.")] = "min",
    truncate: Annotated[bool, typer.Option(help="Truncate too-long rows instead of refusing them.")] = False,
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "warning",
) -> None:
    """Score a reference set and write its reward mean and std (population) for `normalize: FILE`."""
    setup_logging(log_level)
    if not model.is_dir():
        typer.echo(f"error: --model {model} is not a directory", err=True)
        raise typer.Exit(2)
    if not data.is_file():
        typer.echo(f"error: --data {data} is not a file", err=True)
        raise typer.Exit(2)
    if kind not in (None, "model", "prm"):
        typer.echo(f"error: --kind must be model or prm, not {kind!r}", err=True)
        raise typer.Exit(2)
    if step_reduce not in ("min", "last", "mean", "prod"):
        typer.echo(f"error: --step-reduce must be min, last, mean or prod, not {step_reduce!r}", err=True)
        raise typer.Exit(2)
    settings = build_settings(given)
    from rewardserve.calibrate import calibrate as run
    from rewardserve.errors import RewardServeError

    try:
        result = run(
            model,
            data,
            output,
            settings=settings,
            kind=kind,
            step_separator=step_separator,
            step_reduce=step_reduce,  # type: ignore[arg-type]  # checked above
            truncate=truncate,
        )
    except RewardServeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:  # a model the engine cannot load (head, separator): say why
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = {k: result[k] for k in ("mean", "std", "count", "min", "max")}
    typer.echo(json.dumps(summary))
    typer.echo(f"wrote {output}; use it with `normalize: {output}` in a models: entry", err=True)
