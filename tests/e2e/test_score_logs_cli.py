"""`rewardserve score-logs` as a user runs it: a subprocess, killed with SIGKILL mid-run and resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

BIN = Path(sys.executable).parent / "rewardserve"
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "sun", "is", "good", "bad", "yes", "no", "maybe"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", REWARDSERVE_CACHE_DIR=str(tmp_path / "cache"))
    return e


def _write_log(path: Path, n: int, *, bad_every: int = 0) -> None:
    rng = random.Random(0)
    lines = []
    for i in range(n):
        row: dict[str, Any] = {"id": i, "prompt": " ".join(rng.choices(WORDS, k=3)) + "?"}
        if not bad_every or i % bad_every:
            row["response"] = " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")


def _args(log: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        str(BIN),
        "score-logs",
        str(log),
        "-o",
        str(out),
        "--model",
        str(model),
        "--batch-strategy",
        "sequential",
        "--torch-threads",
        "1",
        "--id-col",
        "id",
        *extra,
    ]


def _table_rows(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "scored_at"} for r in pq.read_table(path).to_pylist()]


def test_kill_and_resume_gives_the_uninterrupted_output(
    tmp_path: Path, tiny_llama: Path, env: dict[str, str]
) -> None:
    log = tmp_path / "log.jsonl"
    _write_log(log, 4000, bad_every=97)
    out, full = tmp_path / "out.parquet", tmp_path / "full.parquet"
    args = _args(log, out, tiny_llama, "--shard-rows", "200")
    manifest = Path(f"{out}.parts/manifest.json")
    with (tmp_path / "first.log").open("w") as first_log:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=first_log)
        try:
            deadline = time.monotonic() + 180
            done = 0
            while done < 3:  # poll the manifest until some shards are recorded, then kill
                if proc.poll() is not None:
                    pytest.fail(f"exited ({proc.returncode}) before it could be killed:\n{_tail(tmp_path)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no 3 shards done in 180s:\n{_tail(tmp_path)}")
                if manifest.exists():
                    done = len(json.loads(manifest.read_text())["done"])
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
    at_kill = len(json.loads(manifest.read_text())["done"])
    assert 3 <= at_kill < 20 and not out.exists()

    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed: {at_kill} of 20 shards" in resumed.stdout
    uninterrupted = subprocess.run(
        _args(log, full, tiny_llama, "--shard-rows", "200"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    got, want = _table_rows(out), _table_rows(full)
    assert got == want  # row for row, every column but the time it was scored
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)) == 4000 - len(range(0, 4000, 97))  # none lost, none twice
    assert Path(f"{out}.errors.jsonl").read_text() == Path(f"{full}.errors.jsonl").read_text()
    assert not Path(f"{out}.parts").exists()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "first.log").read_text()[-3000:]


def test_summary_report_and_user_errors(tmp_path: Path, tiny_llama: Path, env: dict[str, str]) -> None:
    log = tmp_path / "small.jsonl"
    _write_log(log, 100, bad_every=50)
    out, report = tmp_path / "small.jsonl.out.jsonl", tmp_path / "report.png"
    args = _args(log, out, tiny_llama, "--report", str(report))
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "scored 98 of 100 rows" in p.stdout and "reward  mean" in p.stdout and "p95" in p.stdout
    assert "2 rows not scored" in p.stdout
    assert "rows/s" in p.stderr  # no terminal: periodic log lines instead of a bar
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 98 and {"reward", "reward_model", "scored_at"} <= set(rows[0])
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report.stat().st_size > 20_000

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists; add --overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    missing = subprocess.run(
        _args(tmp_path / "nope.jsonl", out, tiny_llama), env=env, capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 2 and "input not found" in missing.stderr
