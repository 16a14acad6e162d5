"""Score one shard: read it, refuse bad rows with a reason, score the rest, write its part files.

Every engine runs this same function (the local one in this process, Ray's in its actors), with a
``Scorer`` that turns ScoreInputs into ScoreOutputs: the engine in-process, or a server over HTTP.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow.parquet as pq

from rewardserve.bulk.inputs import InputFile, Shard, read_shard
from rewardserve.bulk.rows import Columns, json_default, rows_to_table, to_input, with_rewards
from rewardserve.bulk.shards import Layout, atomic_write
from rewardserve.errors import RowError
from rewardserve.scoring.types import ScoreInput, ScoreOutput

# (rows, tokens) just finished; called as work completes so a progress bar can move inside a shard.
OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Failed:
    """An input the scorer refused (too long, rejected by the server); ``reason`` goes to the errors file."""

    reason: str


class Scorer(Protocol):
    """Scores inputs in order; a bad input gives Failed in its place instead of stopping the batch."""

    @property
    def model_name(self) -> str: ...

    @property
    def objectives(self) -> tuple[str, ...]: ...

    def score(
        self, inputs: Sequence[ScoreInput], *, truncate: bool, on_progress: OnProgress | None = None
    ) -> list[ScoreOutput | Failed]: ...


@dataclass(frozen=True)
class Job:
    """What every shard of a run shares (picklable: Ray actors get a copy)."""

    files: tuple[InputFile, ...]
    columns: Columns
    truncate: bool
    layout: Layout


@dataclass(frozen=True)
class ShardResult:
    index: int
    rows: int
    errors: int
    tokens: int


def process_shard(
    job: Job, shard: Shard, scorer: Scorer, on_progress: OnProgress | None = None
) -> ShardResult:
    """Score ``shard`` and write ``part-NNNNN.parquet`` (+ ``.errors.jsonl``); idempotent."""
    file = job.files[shard.file]
    raw = read_shard(file, shard)
    errors: list[tuple[int, str]] = []
    inputs: list[ScoreInput] = []
    kept: list[int] = []
    for i, row in enumerate(raw.rows):
        if isinstance(row, str):
            errors.append((i, row))
            continue
        try:
            inputs.append(to_input(row, job.columns))
            kept.append(i)
        except RowError as exc:
            errors.append((i, str(exc)))
    if on_progress is not None and errors:
        on_progress(len(errors), 0)
    results = scorer.score(inputs, truncate=job.truncate, on_progress=on_progress) if inputs else []
    good: list[int] = []
    outputs: list[ScoreOutput] = []
    for i, result in zip(kept, results, strict=True):
        if isinstance(result, Failed):
            errors.append((i, result.reason))
        elif not (math.isfinite(result.score) and all(math.isfinite(v) for v in result.values)):
            # As the server answers 500 for it: a NaN/Inf is a failed row, never a reward in the output.
            errors.append((i, f"the model produced a non-finite reward ({result.score})"))
        else:
            good.append(i)
            outputs.append(result)
    if raw.table is not None:
        base = raw.table.take(good)
    else:
        base = rows_to_table([r for r in (raw.rows[i] for i in good) if isinstance(r, dict)])
    table = with_rewards(
        base,
        outputs,
        model_name=scorer.model_name,
        objectives=scorer.objectives,
        scored_at=dt.datetime.now(dt.UTC),
    )
    atomic_write(job.layout.part(shard.index), lambda tmp: pq.write_table(table, tmp))
    errors_path = job.layout.part_errors(shard.index)
    if errors:
        records = [
            _error_record(job, file, shard, raw.rows[i], raw.where[i], raw.kind, i, reason)
            for i, reason in sorted(errors)
        ]
        text = "".join(json.dumps(r, ensure_ascii=False, default=json_default) + "\n" for r in records)
        atomic_write(errors_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    else:
        errors_path.unlink(missing_ok=True)  # left by an attempt that was killed before it was recorded
    return ShardResult(shard.index, len(good), len(errors), sum(o.tokens for o in outputs))


def _error_record(
    job: Job,
    file: InputFile,
    shard: Shard,
    row: dict[str, Any] | str,
    where: int,
    kind: str,
    i: int,
    reason: str,
) -> dict[str, Any]:
    record: dict[str, Any] = {"row": shard.first_row + i, "file": file.path, kind: where}
    if job.columns.id is not None:
        record["id"] = row.get(job.columns.id) if isinstance(row, dict) else None
    record["reason"] = reason
    return record
