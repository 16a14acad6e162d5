"""``score_logs``: plan (or resume) a run, score the pending shards on an engine, assemble, summarise.

Engines differ only in where ``process_shard`` runs and what scores: ``local`` runs it here on the
engine in-process, ``server`` runs it here against ``/v1/score``, ``ray`` runs it in Ray actors that
each load the engine. Whatever the engine, this process alone records finished shards.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewardserve.bulk.inputs import InputFile, Shard, expand_inputs, peek_columns, plan_shards
from rewardserve.bulk.job import Job, Scorer, ShardResult, process_shard
from rewardserve.bulk.ray_runner import RayOptions
from rewardserve.bulk.report import RewardStats, Summary, write_histogram
from rewardserve.bulk.rows import OUTPUT_COLUMNS, resolve_columns
from rewardserve.bulk.shards import (
    Done,
    Layout,
    Manifest,
    assemble,
    cleanup,
    fingerprint_diff,
    remove_run,
    run_lock,
)
from rewardserve.config import Settings
from rewardserve.errors import BulkError

log = logging.getLogger("rewardserve.bulk")
Engine = Literal["local", "server", "ray"]


@dataclass(frozen=True)
class BulkOptions:
    """One ``score-logs`` run. ``settings`` configure the model for the local and ray engines."""

    inputs: tuple[str, ...]
    output: Path
    engine: Engine = "local"
    settings: Settings = field(default_factory=Settings)
    name: str | None = None
    url: str | None = None
    prompt_col: str | None = None
    response_col: str | None = None
    messages_col: str | None = None
    text_col: str | None = None
    id_col: str | None = None
    truncate: bool = False
    shard_rows: int = 10_000
    overwrite: bool = False
    report: Path | None = None
    concurrency: int = 8
    batch_size: int = 64
    max_retries: int = 10
    timeout_s: float = 300.0
    ray: RayOptions = field(default_factory=RayOptions)
    progress: bool | None = None
    """A progress bar (True), log lines (False), or a bar only when stderr is a terminal (None)."""
    log_every_s: float = 10.0


class Progress:
    """tqdm on a terminal (rows/s, tokens/s, ETA); otherwise a log line every ``log_every_s``."""

    def __init__(self, total: int, done: int, *, bar: bool, log_every_s: float) -> None:
        self.total, self.done = total, done
        self.rows = self.tokens = self.errors = 0
        self.t0 = self._last_log = time.monotonic()
        self._t_end: float | None = None
        self.log_every_s = log_every_s
        self._want_bar = bar
        self._bar: Any = None

    def start(self) -> None:
        """Start the clock once the model is loaded, so rates and ETA measure scoring alone."""
        self.t0 = self._last_log = time.monotonic()
        if self._want_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                unit="row",
                unit_scale=True,
                dynamic_ncols=True,
                desc="scoring",
            )

    @property
    def elapsed(self) -> float:
        """Seconds spent scoring (frozen by ``close``)."""
        return (self._t_end or time.monotonic()) - self.t0

    def advance(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.done += rows
        self.tokens += tokens
        if self._bar is not None:
            self._postfix()
            self._bar.update(rows)
        elif time.monotonic() - self._last_log >= self.log_every_s:
            self._log()

    def add_errors(self, n: int) -> None:
        """Counted when a shard is recorded (its rows were already counted as they were scored)."""
        self.errors += n
        if self._bar is not None and n:
            self._postfix()
            self._bar.refresh()

    def _postfix(self) -> None:
        rate = self.tokens / max(1e-9, self.elapsed)
        self._bar.set_postfix_str(f"{rate:,.0f} tok/s, {self.errors} errors", refresh=False)

    def _log(self) -> None:
        self._last_log = time.monotonic()
        elapsed = max(1e-9, self.elapsed)
        rate = self.rows / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info(
            "%s/%s rows (%.0f%%), %.0f rows/s, %.0f tokens/s, %d errors, ETA %s",
            f"{self.done:,}",
            f"{self.total:,}",
            100 * self.done / max(1, self.total),
            rate,
            self.tokens / elapsed,
            self.errors,
            _duration(eta),
        )

    def close(self) -> None:
        if self._t_end is not None:
            return
        self._t_end = time.monotonic()
        if self._bar is not None:
            self._bar.close()
        elif self.rows:
            self._log()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _model_identity(opts: BulkOptions) -> tuple[Path | None, dict[str, Any]]:
    """The model path (local/ray) and what identifies the scores' source in the fingerprint."""
    if opts.engine == "server":
        if not opts.url:
            raise BulkError("--engine server needs --url (e.g. --url http://127.0.0.1:8000)")
        return None, {"model": opts.url.rstrip("/"), "model_name": opts.name}
    from rewardserve.bulk.several import declares_several
    from rewardserve.demo.paths import resolve_model_path

    s = opts.settings
    if declares_several(s):
        if opts.engine != "local":
            raise BulkError(
                "several models (--model NAME=PATH, --config) are scored with --engine local; "
                "for the server engine, serve them and pass --name to score with one"
            )
        from rewardserve.errors import ConfigError
        from rewardserve.sources.spec import from_settings

        try:
            entries = from_settings(s)  # checked now, before any shard is planned
        except ConfigError as exc:
            raise BulkError(str(exc)) from None
        return None, {
            "models": [{"name": e.name, "kind": e.kind, "declared": repr(e.plan)} for e in entries],
            "dtype": s.dtype,
            "max_input_tokens": s.max_input_tokens,
            "truncation_side": s.truncation_side,
        }
    if s.model is not None and not s.model.is_dir():
        raise BulkError(f"--model {s.model} is not a directory")
    path = resolve_model_path(s).resolve()
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        # Checked here too so a Ray run fails at once, not after every actor has died loading it.
        raise BulkError(
            f"--model {path} needs config.json and *.safetensors weights (a transformers model dir)"
        )
    return path, {
        "model": str(path),
        "weights": weights_fingerprint(path),
        "model_name": opts.name,
        "dtype": s.dtype,
        "max_input_tokens": s.max_input_tokens,
        "truncation_side": s.truncation_side,
        "score_activation": s.score_activation,
        "objective": s.objective,
    }


def weights_fingerprint(model_dir: Path) -> str:
    """What identifies a model's weights, cheaply (a few MB read whatever the model's size): for each
    ``*.safetensors`` file, its name, size, and a sha256 of its header (every tensor's name, dtype,
    shape and offsets) plus its first and last MiB. Retrained or fine-tuned weights at the same path
    change it, so a resumed run never mixes rewards of two models."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with path.open("rb") as f:
            digest.update(f.read(_MIB))  # the header (8-byte length + JSON) and the first tensors
            if size > 2 * _MIB:
                f.seek(size - _MIB)
                digest.update(f.read(_MIB))
            else:
                digest.update(f.read())
    return digest.hexdigest()[:32]


_MIB = 1 << 20


def _open_manifest(opts: BulkOptions, layout: Layout, paths: list[Path], fp: dict[str, Any]) -> Manifest:
    """The manifest of the unfinished run of this same command, or a new plan."""
    if layout.manifest.exists() and not opts.overwrite:
        manifest = Manifest.load(layout.manifest)
        diff = fingerprint_diff(manifest.fingerprint, fp)
        if diff is not None and diff.startswith("option weights "):
            raise BulkError(
                f"{layout.parts_dir} holds an unfinished run scored with other weights: the model's "
                "*.safetensors files changed since it started (same path, different weights), and one "
                "output must not mix two models. Restore those weights to finish it, or add --overwrite "
                "to start over."
            )
        if diff is not None:
            raise BulkError(
                f"{layout.parts_dir} holds an unfinished run of a different command: {diff}. Rerun that "
                "command to finish it, or add --overwrite to start over."
            )
        return manifest
    if opts.overwrite:
        remove_run(layout)
    elif layout.out.exists():
        raise BulkError(f"{layout.output} already exists; add --overwrite to replace it")
    files, shards = plan_shards(paths, opts.shard_rows)
    if not shards:
        raise BulkError("the inputs hold no rows")
    available = peek_columns(paths[0])
    columns = resolve_columns(
        prompt=opts.prompt_col,
        response=opts.response_col,
        messages=opts.messages_col,
        text=opts.text_col,
        id_col=opts.id_col,
        available=available,
    )
    clash = [c for c in available if c in OUTPUT_COLUMNS]
    if clash:
        log.warning("input columns %s will be replaced by this run's scores", clash)
    manifest = Manifest(fp, files, shards, columns)
    manifest.save(layout.manifest)
    return manifest


def score_logs(opts: BulkOptions) -> Summary:
    """Score every row of ``opts.inputs`` into ``opts.output``, resuming an interrupted run."""
    t0 = time.monotonic()
    if opts.shard_rows < 1 or opts.batch_size < 1 or opts.concurrency < 1:
        raise BulkError("--shard-rows, --batch-size and --concurrency must be at least 1")
    if opts.report is not None:
        import matplotlib  # noqa: F401  # fail now, not after hours of scoring, if it is missing

        opts.report.resolve().parent.mkdir(parents=True, exist_ok=True)
    opts.output.resolve().parent.mkdir(parents=True, exist_ok=True)
    layout = Layout(str(opts.output.resolve()))
    paths = expand_inputs(opts.inputs)
    if any(str(p) in (layout.output, str(layout.errors)) for p in paths):
        raise BulkError(f"{layout.output} is also an input; write the scores to another file")
    model_path, identity = _model_identity(opts)
    columns = {
        k: getattr(opts, k) for k in ("prompt_col", "response_col", "messages_col", "text_col", "id_col")
    }
    fp = {
        "inputs": [InputFile.stat(p).identity() for p in paths],
        "options": {**columns, **identity, "truncate": opts.truncate, "shard_rows": opts.shard_rows},
    }
    with run_lock(layout):
        manifest = _open_manifest(opts, layout, paths, fp)
        pending = [s for s in manifest.shards if s.index not in manifest.done]
        resumed = len(manifest.shards) - len(pending)
        if resumed:
            log.info("resuming: %d of %d shards were done by an earlier run", resumed, len(manifest.shards))
        total = sum(f.rows for f in manifest.files)
        bar = sys.stderr.isatty() if opts.progress is None else opts.progress
        progress = Progress(
            total,
            sum(s.rows for s in manifest.shards if s.index in manifest.done),
            bar=bar,
            log_every_s=opts.log_every_s,
        )
        job = Job(tuple(manifest.files), manifest.columns, opts.truncate, layout)
        shard_rows = {s.index: s.rows for s in manifest.shards}

        def commit(result: ShardResult, *, advance: bool = False) -> None:
            manifest.done[result.index] = Done(result.rows, result.errors, result.tokens)
            manifest.save(layout.manifest)
            progress.add_errors(result.errors)
            if advance:
                progress.advance(shard_rows[result.index], result.tokens)

        model_name = opts.name or (model_path.name if model_path is not None else "")
        if model_path is None and opts.engine == "local":  # several entries: the default's name
            model_name = identity["models"][0]["name"]
        try:
            if pending:
                _run_engine(opts, job, pending, model_path, model_name, commit, progress)
        finally:
            progress.close()
        assembled = assemble(layout, manifest)
        cleanup(layout)
    done = manifest.done.values()
    wall = time.monotonic() - t0
    summary = Summary(
        output=layout.output,
        errors_file=str(layout.errors) if layout.errors.exists() else None,
        model=assembled.model or model_name,
        engine=opts.engine,
        rows_in=total,
        rows_out=sum(d.rows for d in done),
        errors=sum(d.errors for d in done),
        shards=len(manifest.shards),
        shards_resumed=resumed,
        tokens=sum(d.tokens for d in done),
        wall_s=wall,
        scoring_s=progress.elapsed,
        rows_per_s=progress.rows / max(1e-9, progress.elapsed),
        tokens_per_s=progress.tokens / max(1e-9, progress.elapsed),
        rewards=RewardStats.of(assembled.rewards),
        report=str(opts.report) if opts.report else None,
    )
    if opts.report is not None:
        write_histogram(opts.report, assembled.rewards, summary)
    return summary


def _run_engine(
    opts: BulkOptions,
    job: Job,
    pending: list[Shard],
    model_path: Path | None,
    model_name: str,
    commit: Callable[..., None],
    progress: Progress,
) -> None:
    if opts.engine == "ray":
        from rewardserve.bulk.ray_runner import run_on_ray

        assert model_path is not None
        run_on_ray(
            job,
            pending,
            model_path=model_path,
            settings=opts.settings,
            model_name=model_name,
            opts=opts.ray,
            on_done=lambda r: commit(r, advance=True),
            on_start=progress.start,
        )
        return
    if opts.engine == "server":
        from rewardserve.bulk.server import ServerScorer

        assert opts.url is not None
        with ServerScorer(
            opts.url,
            model=opts.name,
            concurrency=opts.concurrency,
            batch_size=opts.batch_size,
            max_retries=opts.max_retries,
            timeout_s=opts.timeout_s,
        ) as server:
            _run_here(job, pending, server, commit, progress)
        return
    if model_path is None:  # several declared entries: reward_<name> columns
        from rewardserve.bulk.several import RegistryScorer

        try:
            several = RegistryScorer(opts.settings)
        except (OSError, ValueError) as exc:  # ConfigError is a ValueError too
            raise BulkError(f"cannot load the declared models: {exc}") from exc
        try:
            _run_here(job, pending, several, commit, progress)
        finally:
            several.close()
        return
    from rewardserve.bulk.local import LocalScorer

    try:
        scorer = LocalScorer.load(model_path, opts.settings, model_name=model_name)
    except (OSError, ValueError) as exc:
        raise BulkError(f"cannot load the model in {model_path}: {exc}") from exc
    try:
        _run_here(job, pending, scorer, commit, progress)
    finally:
        scorer.close()


def _run_here(
    job: Job, pending: list[Shard], scorer: Scorer, commit: Callable[..., None], progress: Progress
) -> None:
    progress.start()
    for shard in pending:
        commit(process_shard(job, shard, scorer, progress.advance))
