"""Bulk scoring meets pathological inputs and changed models: a line nested 100k deep and a corrupt
Parquet row group become error rows (the run goes on), a NaN reward is an error row (never a reward
in the output), and resuming after the model's weights changed under the same path is refused."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rewardserve.bulk import runner
from rewardserve.bulk.inputs import plan_shards
from rewardserve.bulk.job import Failed, Job, OnProgress, process_shard
from rewardserve.bulk.rows import Columns
from rewardserve.bulk.runner import BulkOptions, score_logs
from rewardserve.bulk.shards import Layout
from rewardserve.config import Settings
from rewardserve.errors import BulkError
from rewardserve.scoring.types import ScoreInput, ScoreOutput


def _settings(model: Path) -> Settings:
    return Settings(model=model, batch_strategy="sequential", max_input_tokens=64, torch_threads=1)


def _errors(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]


def test_deeply_nested_lines_become_error_rows(tmp_path: Path, tiny_llama: Path) -> None:
    deep = b'{"id": "deep", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "response": "x"}'
    nested = {"id": "nested", "prompt": "hi", "response": "x", "meta": {}}
    inner = nested["meta"]
    for _ in range(100):  # parses, but deeper than a log row has any business being
        inner["x"] = {}
        inner = inner["x"]
    ok = {"id": "ok", "prompt": "2+2?", "response": "4"}
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"\n".join([json.dumps(ok).encode(), deep, json.dumps(nested).encode()]) + b"\n")
    out = tmp_path / "deep_out.parquet"
    s = score_logs(
        BulkOptions(inputs=(str(path),), output=out, settings=_settings(tiny_llama), progress=False)
    )
    assert (s.rows_out, s.errors) == (1, 2)
    assert [e["line"] for e in _errors(out)] == [2, 3]
    assert all("nested deeper than 64 levels" in e["reason"] for e in _errors(out))


def test_corrupt_parquet_row_group_becomes_error_rows(tmp_path: Path, tiny_llama: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": f"question {i}?", "response": f"answer {i}"} for i in range(30)]
    path = tmp_path / "corrupt.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10, compression="snappy")
    meta = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    for c in range(meta.num_columns):  # overwrite every column chunk of the middle row group
        chunk = meta.row_group(1).column(c)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    out = tmp_path / "corrupt_out.parquet"
    s = score_logs(
        BulkOptions(inputs=(str(path),), output=out, settings=_settings(tiny_llama), progress=False)
    )
    assert (s.rows_out, s.errors) == (20, 10)
    errors = _errors(out)
    assert [e["file_row"] for e in errors] == list(range(10, 20))
    assert all("unreadable Parquet row group 1" in e["reason"] for e in errors)
    scored = pq.read_table(out).to_pylist()
    assert [r["id"] for r in scored] == [f"r{i}" for i in (*range(10), *range(20, 30))]


class _NaNScorer:
    """Scores everything 1.0, except a NaN for the responses it is told to break."""

    model_name = "fake"
    objectives: tuple[str, ...] = ()

    def score(
        self, inputs: Sequence[ScoreInput], *, truncate: bool, on_progress: OnProgress | None = None
    ) -> list[ScoreOutput | Failed]:
        out: list[ScoreOutput | Failed] = []
        for inp in inputs:
            value = math.nan if inp.response == "broken" else 1.0
            out.append(ScoreOutput(score=value, values=(value,), tokens=3, truncated=False))
        return out


def test_non_finite_rewards_go_to_the_errors_file(tmp_path: Path) -> None:
    path = tmp_path / "nan.jsonl"
    rows = [{"prompt": "q", "response": r} for r in ("fine", "broken", "also fine")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files, shards = plan_shards([path], 100)
    layout = Layout(str(tmp_path / "nan_out.parquet"))
    layout.parts_dir.mkdir()
    job = Job(tuple(files), Columns(mode="pair"), False, layout)
    result = process_shard(job, shards[0], _NaNScorer())
    assert (result.rows, result.errors) == (2, 1)
    (error,) = [json.loads(x) for x in layout.part_errors(0).read_text().splitlines()]
    assert error["line"] == 2 and "non-finite reward" in error["reason"]
    assert pq.read_table(layout.part(0)).column("reward").to_pylist() == [1.0, 1.0]


def test_resume_after_the_weights_changed_is_refused(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(40)))
    out = tmp_path / "out.parquet"
    options = BulkOptions(
        inputs=(str(path),), output=out, settings=_settings(model), shard_rows=10, progress=False
    )

    real, calls = runner.process_shard, 0

    def stop_after_one(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise KeyboardInterrupt  # the run is killed mid-way
        return real(*args, **kw)

    monkeypatch.setattr(runner, "process_shard", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        score_logs(options)
    monkeypatch.undo()

    # The model is retrained in place: same path, same file size, different weights.
    (weights,) = model.glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BulkError, match=r"other weights.*--overwrite"):
        score_logs(options)
    # Restored weights: the same run resumes.
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    summary = score_logs(options)
    assert (summary.shards_resumed, summary.rows_out) == (1, 40)
