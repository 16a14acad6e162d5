"""``rewardserve score-logs``: score logged outputs in bulk (the work is done by ``rewardserve.bulk``).

The model options of the local and ray engines are generated from Settings, like ``serve``'s.
Imports nothing heavy at module level, so ``rewardserve --help`` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from rewardserve.cli._settings import build_settings, setup_logging, with_settings_options

_COLS = "Input columns"
# Optional packages and the extra that installs each (pyproject.toml).
_EXTRAS = {"pyarrow": "bulk", "matplotlib": "bulk", "ray": "ray"}
_LOCAL = "Model (local and ray engines)"
_SERVER = "Server engine"
_RAY = "Ray engine"


# Settings fields the local and ray engines use; the server engine's model is the server's business.
_MODEL_FIELDS = (
    "model",  # repeatable: --model NAME=PATH --model NAME=PATH writes reward_<name> columns
    "config",  # or every entry of a YAML declaration (models, ensembles, composites)
    "device",
    "dtype",
    "batch_strategy",
    "max_batch_tokens",
    "max_input_tokens",
    "trust_remote_code",
    "torch_threads",
)


@with_settings_options(_MODEL_FIELDS, panel=_LOCAL)
def score_logs(
    given: dict[str, Any],
    inputs: Annotated[list[str], typer.Argument(help="JSONL / Parquet files, globs or directories.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .parquet (or .jsonl).")],
    engine: Annotated[str, typer.Option(help="local (in-process) | server | ray")] = "local",
    prompt_col: Annotated[str | None, typer.Option(help="Prompt column.", rich_help_panel=_COLS)] = None,
    response_col: Annotated[str | None, typer.Option(help="Response column.", rich_help_panel=_COLS)] = None,
    messages_col: Annotated[
        str | None, typer.Option(help="Conversation column ([{role, content}]).", rich_help_panel=_COLS)
    ] = None,
    text_col: Annotated[str | None, typer.Option(help="Raw text column.", rich_help_panel=_COLS)] = None,
    id_col: Annotated[
        str | None, typer.Option(help="Row id, copied into the errors file.", rich_help_panel=_COLS)
    ] = None,
    truncate: Annotated[bool, typer.Option(help="Truncate too-long rows instead of refusing them.")] = False,
    shard_rows: Annotated[int, typer.Option(help="Rows per shard (the unit of resume).")] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT and any unfinished run of it.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write a reward histogram to this PNG.")] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Local: the reward_model label (default: model dir name). Server: model."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Server base URL.", rich_help_panel=_SERVER)] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.", rich_help_panel=_SERVER)] = 8,
    batch_size: Annotated[int, typer.Option(help="Rows per request.", rich_help_panel=_SERVER)] = 64,
    max_retries: Annotated[
        int,
        typer.Option(help="Retries per request (429/502/503, connection failures).", rich_help_panel=_SERVER),
    ] = 10,
    ray_address: Annotated[
        str | None, typer.Option(help="Existing cluster; default: start a local one.", rich_help_panel=_RAY)
    ] = None,
    ray_actors: Annotated[int, typer.Option(help="Scorer actors.", rich_help_panel=_RAY)] = 2,
    ray_num_cpus: Annotated[
        int | None, typer.Option(help="CPUs of the local cluster (default: all).", rich_help_panel=_RAY)
    ] = None,
    num_cpus_per_actor: Annotated[float, typer.Option(rich_help_panel=_RAY)] = 1.0,
    num_gpus_per_actor: Annotated[float, typer.Option(rich_help_panel=_RAY)] = 0.0,
    progress: Annotated[
        bool | None, typer.Option(help="Progress bar (default: when stderr is a terminal).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
) -> None:
    """Score logged conversations (JSONL / Parquet) into OUTPUT, resumably; summary on stdout.

    Several models (--model NAME=PATH, repeated, or --config FILE) add a reward_<name> column per
    declared entry; reward is the first entry's."""
    setup_logging(log_level)
    # httpx logs every request at INFO, and the client every retry: thousands of lines for one run of
    # the server engine (bulk.server logs retries at DEBUG).
    for noisy in ("httpx", "rewardserve.client"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if engine not in ("local", "server", "ray"):
        typer.echo(f"error: --engine must be local, server or ray, not {engine!r}", err=True)
        raise typer.Exit(2)
    settings = build_settings(given)
    try:
        from rewardserve.bulk.ray_runner import RayOptions
        from rewardserve.bulk.runner import BulkOptions
        from rewardserve.bulk.runner import score_logs as run
        from rewardserve.errors import BulkError
    except ModuleNotFoundError as exc:
        _missing_extra(exc)

    opts = BulkOptions(
        inputs=tuple(inputs),
        output=output,
        engine=engine,  # type: ignore[arg-type]  # checked above
        settings=settings,
        name=name,
        url=url,
        prompt_col=prompt_col,
        response_col=response_col,
        messages_col=messages_col,
        text_col=text_col,
        id_col=id_col,
        truncate=truncate,
        shard_rows=shard_rows,
        overwrite=overwrite,
        report=report,
        concurrency=concurrency,
        batch_size=batch_size,
        max_retries=max_retries,
        ray=RayOptions(
            address=ray_address,
            actors=ray_actors,
            num_cpus=ray_num_cpus,
            cpus_per_actor=num_cpus_per_actor,
            gpus_per_actor=num_gpus_per_actor,
        ),
        progress=progress,
    )
    try:
        summary = run(opts)
    except BulkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except ModuleNotFoundError as exc:  # ray (or matplotlib for --report) is imported when needed
        _missing_extra(exc)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished shards are kept; rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary.text())


def _missing_extra(exc: ModuleNotFoundError) -> NoReturn:
    package = (exc.name or "").split(".")[0]
    if package not in _EXTRAS:
        raise exc
    typer.echo(f"error: score-logs needs {package}: pip install 'rewardserve[{_EXTRAS[package]}]'", err=True)
    raise typer.Exit(2) from None
