"""Command line: ``rewardserve serve | demo``.

Every option is also a Settings field, so ``REWARDSERVE_<FIELD>`` in the environment sets it; an
option given on the command line wins over the environment.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from rewardserve.bulk.command import score_logs
from rewardserve.config import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reward-model serving for RLHF.")


def _settings(**given: Any) -> Settings:
    """Settings from the environment, overridden by the options that were given."""
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()]
        typer.echo("invalid settings:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


_GEN = "Policy generation (vLLM)"


@app.command()
def serve(
    model: Annotated[
        Path | None, typer.Option(help="Reward model directory; default: the built-in demo model.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name clients use.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | float32 | bfloat16 | float16")] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Token budget of one batch.")] = None,
    max_input_tokens: Annotated[int | None, typer.Option(help="Longest accepted input.")] = None,
    batch_strategy: Annotated[str | None, typer.Option(help="auto | packed | padded | sequential")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000; 0 = any free port).")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (default 50051; 0 = any free port).")
    ] = None,
    trust_remote_code: Annotated[bool | None, typer.Option(help="Run code shipped with the model.")] = None,
    torch_compile: Annotated[
        bool | None, typer.Option(help="torch.compile the decoder at load (slower start, faster forwards).")
    ] = None,
    fused_cpu: Annotated[
        bool | None, typer.Option(help="CPU: fused oneDNN forward for Llama/Mistral/Qwen (default on).")
    ] = None,
    generator: Annotated[
        Path | None,
        typer.Option(help="Policy model dir for /v1/generate, /v1/rollout (vLLM).", rich_help_panel=_GEN),
    ] = None,
    generator_name: Annotated[
        str | None, typer.Option(help="Policy name (default policy).", rich_help_panel=_GEN)
    ] = None,
    generator_dtype: Annotated[
        str | None, typer.Option(help="auto | float32 | bfloat16 | float16", rich_help_panel=_GEN)
    ] = None,
    generator_max_model_len: Annotated[
        int | None, typer.Option(help="Longest prompt+completion.", rich_help_panel=_GEN)
    ] = None,
    generator_gpu_memory_fraction: Annotated[
        float | None, typer.Option(help="Share of the GPU for vLLM (default 0.5).", rich_help_panel=_GEN)
    ] = None,
    generator_kv_cache_bytes: Annotated[
        int | None, typer.Option(help="Fixed KV cache size (CPU default 256 MiB).", rich_help_panel=_GEN)
    ] = None,
    generator_tensor_parallel_size: Annotated[
        int | None, typer.Option(help="GPUs to shard over.", rich_help_panel=_GEN)
    ] = None,
    generator_seed: Annotated[int | None, typer.Option(help="Engine seed.", rich_help_panel=_GEN)] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
) -> None:
    """Serve a reward model over HTTP (and a vLLM policy with --generator)."""
    _logging(log_level)
    settings = _settings(
        model=model,
        model_name=name,
        device=device,
        dtype=dtype,
        max_batch_tokens=max_batch_tokens,
        max_input_tokens=max_input_tokens,
        batch_strategy=batch_strategy,
        host=host,
        port=port,
        grpc_port=grpc_port,
        trust_remote_code=trust_remote_code,
        torch_compile=torch_compile,
        fused_cpu=fused_cpu,
        generator=generator,
        generator_name=generator_name,
        generator_dtype=generator_dtype,
        generator_max_model_len=generator_max_model_len,
        generator_gpu_memory_fraction=generator_gpu_memory_fraction,
        generator_kv_cache_bytes=generator_kv_cache_bytes,
        generator_tensor_parallel_size=generator_tensor_parallel_size,
        generator_seed=generator_seed,
    )
    if settings.model is not None and not settings.model.is_dir():
        typer.echo(f"error: --model {settings.model} is not a directory", err=True)
        raise typer.Exit(2)
    if settings.generator is not None and not settings.generator.is_dir():
        typer.echo(f"error: --generator {settings.generator} is not a directory", err=True)
        raise typer.Exit(2)
    from rewardserve.app import serve as run_server

    raise typer.Exit(asyncio.run(run_server(settings)))


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Build into this directory instead of the cache.")] = None,
) -> None:
    """Build (or find in the cache) the demo reward model and print where it is."""
    _logging("info")
    from rewardserve.demo.build import build_demo_model, ensure_demo_model

    if out is not None:
        build_demo_model(out)
        typer.echo(str(out))
    else:
        typer.echo(str(ensure_demo_model(_settings().cache_dir)))


# Implemented in rewardserve.bulk; registered here so every command lives under one `rewardserve`.
app.command("score-logs")(score_logs)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
