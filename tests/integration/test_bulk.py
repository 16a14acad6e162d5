"""Bulk scoring of logs on real engines: in-process, a real server on port 0, a local 2-CPU Ray cluster.

The 10k-row log and each engine's run of it are module fixtures, so every engine scores it once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rewardserve.bulk import runner
from rewardserve.bulk.ray_runner import RayOptions
from rewardserve.bulk.report import Summary
from rewardserve.bulk.runner import BulkOptions, score_logs
from rewardserve.bulk.shards import Layout, run_lock
from rewardserve.config import Settings
from rewardserve.errors import BulkError
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.types import ScoreInput
from rewardserve.testing.ports import free_port
from rewardserve.testing.server_thread import ServerThread

# Ray Data's own DataContext warns about its deprecated fields when it is pickled; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
MAX_TOKENS = 64
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "sun", "is", "good", "bad", "yes", "no", "maybe"]


def _settings(model: Path, **kw: Any) -> Settings:
    # One torch thread: on 2 shared cores, a second OpenMP thread that spins waiting for a busy core
    # made the 10k-row run 40x slower (measured: 255 s vs 6.7 s).
    kw.setdefault("torch_threads", 1)
    return Settings(model=model, batch_strategy="sequential", max_input_tokens=MAX_TOKENS, **kw)


def _run(inputs: list[str | Path], out: Path, **kw: Any) -> Summary:
    kw.setdefault("progress", False)
    return score_logs(BulkOptions(inputs=tuple(str(i) for i in inputs), output=out, **kw))


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return list(pq.read_table(path).to_pylist())


def _synthetic(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "id": f"row-{i}",
            "prompt": " ".join(rng.choices(WORDS, k=rng.randint(1, 4))) + "?",
            "response": " ".join(rng.choices(WORDS, k=rng.randint(1, 6))),
            "latency_ms": rng.randint(5, 500),
        }
        for i in range(n)
    ]


def _server(model: Path, **kw: Any) -> ServerThread:
    """A real RewardServer (HTTP and gRPC on port 0) in its own event loop thread: the runner is sync."""
    return ServerThread(_settings(model, port=0, grpc_port=0, **kw))


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Engines here set torch's thread count, which is process-wide: leave it as the next module found it."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bulk")


@pytest.fixture(scope="module")
def log10k(work: Path) -> Path:
    path = work / "log10k.parquet"
    pq.write_table(pa.Table.from_pylist(_synthetic(10_000)), path, row_group_size=3000)
    return path


@pytest.fixture(scope="module")
def server_url(tiny_llama: Path) -> Iterator[str]:
    with _server(tiny_llama) as srv:
        yield srv.http_url


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    ray = pytest.importorskip("ray")
    # The head (GCS, raylet, dashboard) starts from its own fresh process, `ray start --head --block`,
    # and this process only connects as a driver. Started in-process (`ray.init()`), Ray forked its
    # daemons from the test runner, which by then held gRPC threads from earlier tests: on fresh CI
    # runs the forked dashboard aborted (return code -6, after "Other threads are currently calling
    # into gRPC, skipping fork() handlers"), the node never registered, and the fixture failed after
    # Ray's 30 s wait (3 of 4 fresh runs hit it). `--block` ties the daemons to that one process:
    # SIGTERM to its process group stops them all (SIGKILL after 5 s: `ray start` itself lingers ~30 s).
    # A throwaway cluster on loopback: no auth token to hand from the head to this driver.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        yield from _ray_head(ray, tmp_path_factory)


def _ray_head(ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    port = free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [
                str(ray_bin),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--node-ip-address=127.0.0.1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
                break
            except Exception as exc:
                ray.shutdown()
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"ray head did not come up:\n{log.read_text(errors='replace')[-4000:]}"
                    ) from exc
                time.sleep(1.0)
        yield
    finally:
        ray.shutdown()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.fixture(scope="module")
def local10k(log10k: Path, work: Path, tiny_llama: Path) -> list[dict[str, Any]]:
    out = work / "local10k.parquet"
    summary = _run([log10k], out, settings=_settings(tiny_llama), shard_rows=2500, name="tiny")
    assert (summary.rows_in, summary.rows_out, summary.errors, summary.shards) == (10_000, 10_000, 0, 4)
    return _rows(out)


def _assert_same_rewards(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    diffs = [abs(x["reward"] - y["reward"]) for x, y in zip(a, b, strict=True)]
    assert max(diffs) <= 1e-5, max(diffs)


# ------------------------------------------------------------------------------------- engines agree
def test_local_engine_keeps_columns_and_matches_the_engine(
    local10k: list[dict[str, Any]], log10k: Path, tiny_llama: Path
) -> None:
    inputs = pq.read_table(log10k).to_pylist()
    assert [r["id"] for r in local10k] == [r["id"] for r in inputs]
    first = local10k[0]
    assert list(first) == [
        "id",
        "prompt",
        "response",
        "latency_ms",
        "reward",
        "reward_status",
        "reward_mask",
        "reward_model",
        "scored_at",
    ]
    assert first["reward_status"] == "ok" and first["reward_mask"] is False
    assert first["latency_ms"] == inputs[0]["latency_ms"] and first["reward_model"] == "tiny"
    assert first["scored_at"].tzinfo is not None
    assert len({round(r["reward"], 6) for r in local10k}) > 1000  # real, input-dependent rewards
    engine = RewardEngine.load(tiny_llama, _settings(tiny_llama))
    sample = [inputs[i] for i in (0, 17, 4242, 9999)]
    enc = [
        engine.encode(ScoreInput(prompt=r["prompt"], response=r["response"]), truncate=False) for r in sample
    ]
    direct = [o.score for o in engine.run(engine.prepare(enc))]
    got = [local10k[i]["reward"] for i in (0, 17, 4242, 9999)]
    assert got == pytest.approx(direct, abs=1e-6)


def test_server_engine_matches_local(
    local10k: list[dict[str, Any]], log10k: Path, work: Path, server_url: str
) -> None:
    out = work / "server10k.parquet"
    summary = _run(
        [log10k], out, engine="server", url=server_url, shard_rows=2500, concurrency=4, batch_size=100
    )
    assert (summary.rows_out, summary.errors, summary.model) == (10_000, 0, "default")
    rows = _rows(out)
    _assert_same_rewards(rows, local10k)
    assert rows[0]["reward_model"] == "default"


def test_ray_engine_matches_local(
    local10k: list[dict[str, Any]], log10k: Path, work: Path, tiny_llama: Path, ray_cluster: None
) -> None:
    out = work / "ray10k.parquet"
    summary = _run(
        [log10k],
        out,
        engine="ray",
        settings=_settings(tiny_llama),
        shard_rows=2500,
        name="tiny",
        ray=RayOptions(actors=2, cpus_per_actor=1),
    )
    assert (summary.rows_out, summary.errors, summary.shards) == (10_000, 0, 4)
    rows = _rows(out)
    _assert_same_rewards(rows, local10k)
    assert {k: v for k, v in rows[5].items() if k != "scored_at"} == {
        k: v for k, v in local10k[5].items() if k != "scored_at"
    }


def test_ray_refuses_actors_the_cluster_cannot_host(
    log10k: Path, work: Path, tiny_llama: Path, ray_cluster: None
) -> None:
    with pytest.raises(BulkError, match="GPUs"):
        _run(
            [log10k],
            work / "gpu.parquet",
            engine="ray",
            settings=_settings(tiny_llama),
            ray=RayOptions(actors=1, gpus_per_actor=1),
        )


# ------------------------------------------------------------------------------------------ bad rows
BAD_LINES: list[tuple[bytes, str | None]] = [
    (b'{"id": "ok1", "prompt": "hi", "response": "hello"}', None),
    (b'{"id": "no-response", "prompt": "hi"}', "missing field 'response'"),
    (b'{"id": "int-prompt", "prompt": 5, "response": "x"}', "field 'prompt' must be a string, got int"),
    (b'{"id": "bad-utf8", "prompt": "caf\xe9", "response": "x"}', "invalid UTF-8"),
    (b'{"id": "surrogate", "prompt": "\\udc80", "response": "x"}', "invalid UTF-8"),
    (b'{"id": "broken json", "prompt": ', "invalid JSON"),
    (b'["not", "an", "object"]', "not an object"),
    (b"", None),  # a blank line is not a row
    (b'{"id": "too-long", "prompt": "story", "response": "' + b"word " * 200 + b'"}', "more than this model"),
    (b'{"id": "ok2", "prompt": "2+2?", "response": "4", "extra": [1, 2]}', None),
]


@pytest.fixture(scope="module")
def bad_log(work: Path) -> Path:
    path = work / "bad.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    return path


def _check_bad_run(out: Path, summary: Summary) -> None:
    expected_errors = [(i, r) for i, (_, r) in enumerate(x for x in BAD_LINES if x[0]) if r is not None]
    assert (summary.rows_in, summary.rows_out, summary.errors) == (9, 2, len(expected_errors))
    assert [r["id"] for r in _rows(out)] == ["ok1", "ok2"]
    errors = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [i for i, _ in expected_errors]
    for record, (_, reason) in zip(errors, expected_errors, strict=True):
        assert reason in record["reason"], record
        assert set(record) == {"row", "file", "line", "id", "reason"}
    by_id = {e["id"]: e for e in errors}
    assert by_id["too-long"]["line"] == 9  # 1-based file line: the blank line before it counts
    assert [e["id"] for e in errors].count(None) == 4  # rows not read as JSON objects have no id


def test_bad_rows_go_to_the_errors_file(bad_log: Path, work: Path, tiny_llama: Path) -> None:
    out = work / "bad_local.jsonl"
    summary = _run([bad_log], out, settings=_settings(tiny_llama), id_col="id", shard_rows=4)
    _check_bad_run(out, summary)
    # --truncate scores the long row instead of refusing it
    summary = _run([bad_log], out, settings=_settings(tiny_llama), id_col="id", truncate=True, overwrite=True)
    assert summary.rows_out == 3 and "too-long" in [r["id"] for r in _rows(out)]


def test_bad_rows_against_a_server(bad_log: Path, work: Path, server_url: str) -> None:
    """The server refuses the too-long row with 422 inputs[i]; only that row fails, the rest are scored."""
    out = work / "bad_server.parquet"
    summary = _run([bad_log], out, engine="server", url=server_url, id_col="id", batch_size=8)
    _check_bad_run(out, summary)


# --------------------------------------------------------------------------- formats, globs, columns
def test_parquet_and_jsonl_in_and_out_with_globs(work: Path, tiny_llama: Path) -> None:
    rows = _synthetic(300, seed=1)
    src = work / "mixed"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:100]), src / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[100:200]), src / "b.parquet")
    (src / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[200:]))
    settings = _settings(tiny_llama)
    out_pq, out_jl = work / "mixed.parquet", work / "mixed.jsonl"
    _run([f"{src}/*.parquet", src / "c.jsonl"], out_pq, settings=settings, shard_rows=64)
    _run([src], out_jl, settings=settings, shard_rows=1000)  # a directory: all its files, sorted
    a, b = _rows(out_pq), _rows(out_jl)
    assert [r["id"] for r in a] == [r["id"] for r in b] == [r["id"] for r in rows]
    for x, y in zip(a, b, strict=True):
        assert x["reward"] == pytest.approx(y["reward"], abs=1e-6)
        assert dt.datetime.fromisoformat(y["scored_at"]).tzinfo is not None
        assert (x["latency_ms"], x["prompt"]) == (y["latency_ms"], y["prompt"])


def test_messages_and_text_columns(work: Path, tiny_llama: Path) -> None:
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    path = work / "chats.jsonl"
    lines = [
        {"conv": convo, "raw": "plain text"},
        {"conv": json.dumps(convo), "raw": "more text"},  # a conversation stored as JSON text
        {"conv": [{"role": "user"}], "raw": "x"},
        {"conv": [], "raw": "y"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    s = _run([path], work / "chats.parquet", settings=_settings(tiny_llama), messages_col="conv")
    assert (s.rows_out, s.errors) == (2, 2)
    rewards = [r["reward"] for r in _rows(work / "chats.parquet")]
    assert rewards[0] == pytest.approx(rewards[1], abs=1e-6)
    reasons = Path(f"{work}/chats.parquet.errors.jsonl").read_text()
    assert "conv[0]: missing field 'content'" in reasons and "'conv' is empty" in reasons
    s = _run([path], work / "texts.parquet", settings=_settings(tiny_llama), text_col="raw")
    assert (s.rows_out, s.errors) == (4, 0)
    with pytest.raises(BulkError, match="one kind of input"):
        _run([path], work / "x.parquet", settings=_settings(tiny_llama), text_col="raw", messages_col="conv")


def test_multi_objective_columns_local_and_server(work: Path, tiny_multi: Path) -> None:
    path = work / "multi.parquet"
    pq.write_table(pa.Table.from_pylist(_synthetic(40, seed=2)), path)
    _run([path], work / "multi_out.parquet", settings=_settings(tiny_multi))
    out = _rows(work / "multi_out.parquet")
    objectives = ["reward_helpfulness", "reward_correctness", "reward_safety"]
    assert list(out[0])[-8:] == [
        "reward",
        *objectives,
        "reward_status",
        "reward_mask",
        "reward_model",
        "scored_at",
    ]
    for r in out:
        assert r["reward"] == pytest.approx(sum(r[o] for o in objectives) / 3, abs=1e-6)
    with _server(tiny_multi) as srv:
        _run([path], work / "multi_srv.parquet", engine="server", url=srv.http_url)
    served = _rows(work / "multi_srv.parquet")
    for a, b in zip(out, served, strict=True):
        assert [b[k] for k in ["reward", *objectives]] == pytest.approx(
            [a[k] for k in ["reward", *objectives]]
        )


def test_bad_parquet_values(work: Path, tiny_llama: Path) -> None:
    """Invalid UTF-8 in a Parquet string column (Arrow does not check on read) and in a binary column."""
    raw = pa.array([b"fine", b"caf\xe9", b"also fine"], pa.binary())
    bad_string = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    path = work / "bad_values.parquet"
    pq.write_table(pa.table({"prompt": bad_string, "response": raw, "n": [1, 2, 3]}), path)
    s = _run([path], work / "bad_values_out.parquet", settings=_settings(tiny_llama))
    assert (s.rows_out, s.errors) == (2, 1)
    assert [r["n"] for r in _rows(work / "bad_values_out.parquet")] == [1, 3]
    error = json.loads(Path(f"{work}/bad_values_out.parquet.errors.jsonl").read_text())
    assert error == {"row": 1, "file": str(path), "file_row": 1, "reason": "invalid UTF-8 in a string column"}


# ----------------------------------------------------------------------------- resume and its guards
def test_interrupted_run_resumes_and_guards_its_manifest(
    work: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = work / "resume.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _synthetic(500, seed=3)))
    settings = _settings(tiny_llama)
    reference = work / "resume_ref.parquet"
    _run([path], reference, settings=settings, shard_rows=50)

    calls = 0
    real = runner.process_shard

    def stop_after_three(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run
        return real(*args, **kw)

    out = work / "resume.parquet"
    monkeypatch.setattr(runner, "process_shard", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        _run([path], out, settings=settings, shard_rows=50)
    monkeypatch.undo()
    manifest = json.loads(Layout(str(out)).manifest.read_text())
    assert sorted(manifest["done"]) == ["0", "1", "2"] and not out.exists()

    with pytest.raises(BulkError, match=r"option truncate was False, now True.*--overwrite"):
        _run([path], out, settings=settings, shard_rows=50, truncate=True)
    with pytest.raises(BulkError, match="option shard_rows"):
        _run([path], out, settings=settings, shard_rows=60)

    summary = _run([path], out, settings=settings, shard_rows=50)
    assert (summary.shards_resumed, summary.shards, summary.rows_out) == (3, 10, 500)
    strip = [{k: v for k, v in r.items() if k != "scored_at"} for r in _rows(out)]
    assert strip == [{k: v for k, v in r.items() if k != "scored_at"} for r in _rows(reference)]
    assert not Layout(str(out)).parts_dir.exists()

    with pytest.raises(BulkError, match="already exists"):
        _run([path], out, settings=settings, shard_rows=50)
    assert not Layout(str(out)).parts_dir.exists()  # a refused run leaves nothing behind
    assert _run([path], out, settings=settings, shard_rows=50, overwrite=True).shards_resumed == 0


def test_one_run_per_output(work: Path, tiny_llama: Path) -> None:
    path = work / "lock.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    out = work / "locked.parquet"
    with run_lock(Layout(str(out))), pytest.raises(BulkError, match="another run is writing"):
        _run([path], out, settings=_settings(tiny_llama))


def test_user_errors_are_clear(work: Path, tiny_llama: Path) -> None:
    with pytest.raises(BulkError, match="no file matches"):
        _run([f"{work}/nothing-*.jsonl"], work / "o.parquet", settings=_settings(tiny_llama))
    odd = work / "logs.csv"
    odd.write_text("a,b\n")
    with pytest.raises(BulkError, match="unsupported file type"):
        _run([odd], work / "o.parquet", settings=_settings(tiny_llama))
    cols = work / "cols.jsonl"
    cols.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(BulkError, match="--prompt-col"):
        _run([cols], work / "o.parquet", settings=_settings(tiny_llama))
    with pytest.raises(BulkError, match="needs --url"):
        _run([cols], work / "o.parquet", engine="server")
    with pytest.raises(BulkError, match="also an input"):
        _run([cols], cols, settings=_settings(tiny_llama), overwrite=True)
    (work / "not-a-model").mkdir()
    with pytest.raises(BulkError, match=r"config.json and \*.safetensors"):
        _run([cols], work / "o.parquet", settings=_settings(work / "not-a-model"))


# --------------------------------------------------------------------------------- server resilience
def test_server_engine_waits_out_429(work: Path, tiny_llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server that admits one request at a time: the client honours Retry-After and loses nothing."""
    path = work / "busy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _synthetic(120, seed=4)))
    caplog.set_level(logging.DEBUG, logger="rewardserve.bulk.server")
    with _server(tiny_llama, max_queued_requests=1) as srv:
        summary = _run(
            [path], work / "busy.parquet", engine="server", url=srv.http_url, concurrency=6, batch_size=10
        )
    assert (summary.rows_out, summary.errors) == (120, 0)
    assert any("429" in r.getMessage() and "retry" in r.getMessage() for r in caplog.records)
    local = _run([path], work / "busy_local.parquet", settings=_settings(tiny_llama))
    assert local.rows_out == 120
    _assert_same_rewards(_rows(work / "busy.parquet"), _rows(work / "busy_local.parquet"))


def test_unreachable_server_fails_fast(work: Path) -> None:
    path = work / "one.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(BulkError, match="still failing"):
        _run([path], work / "o2.parquet", engine="server", url="http://127.0.0.1:9", max_retries=2)
