"""`rewardserve serve --generator` as a user runs it: a subprocess with a real vLLM engine on the CPU,
SIGTERM while a generation is in flight, and nothing left running afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

BIN = Path(sys.executable).parent / "rewardserve"

pytestmark = pytest.mark.vllm


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", REWARDSERVE_CACHE_DIR=str(tmp_path / "cache"))
    return env


def _wait_ready(url: str, proc: subprocess.Popen[str], lines: list[str], deadline: float) -> None:
    """Poll readiness until the overall deadline. A probe that times out is retried, not fatal: on a
    cold machine the server can answer a probe late while the generator loads (a 6.3 s answer was
    seen on a fresh clone), and only the deadline says the server is stuck."""
    while True:
        assert proc.poll() is None, "".join(lines[-40:])
        assert time.monotonic() < deadline, "not ready in time:\n" + "".join(lines[-40:])
        try:
            if httpx.get(f"{url}/health/ready", timeout=30).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def test_serve_with_generator_drains_and_leaves_no_engine_process(
    tiny_llama: Path, tiny_policy: Path, tmp_path: Path
) -> None:
    args = [str(BIN), "serve", "--model", str(tiny_llama), "--generator", str(tiny_policy), "--port", "0"]
    args += ["--grpc-port", "0", "--generator-dtype", "float32", "--generator-max-model-len", "1024"]
    proc = subprocess.Popen(
        args, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    port_seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if re.search(r"HTTP on http://[\d.]+:\d+", line):
                port_seen.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert port_seen.wait(120), "".join(lines[-40:])
        m = re.search(r"HTTP on http://[\d.]+:(\d+)", "".join(lines))
        assert m is not None
        url = f"http://127.0.0.1:{m.group(1)}"
        _wait_ready(url, proc, lines, deadline=time.monotonic() + 300)
        engine = [
            p for p in psutil.Process(proc.pid).children(recursive=True) if p.name().startswith("VLLM::")
        ]
        assert engine, "no engine-core process under the server"

        # A generation in flight when SIGTERM arrives is finished before the process exits.
        body = {"prompts": ["hello"], "max_tokens": 600, "ignore_eos": True, "stream": True}
        events = []
        with httpx.Client(timeout=120) as c, c.stream("POST", f"{url}/v1/generate", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if not events:
                    proc.send_signal(signal.SIGTERM)  # one token out, ~600 to go
                events.append(line.removeprefix("data: "))
        assert events[-1] == "[DONE]", events[-3:]
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 600  # finished, not cut
        assert proc.wait(90) == 0, "".join(lines[-40:])
        gone = psutil.wait_procs(engine, timeout=20)[1]
        assert not gone, f"engine processes outlived the server: {gone}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_engine_death_fails_health_and_exits_nonzero_without_orphans(
    tiny_llama: Path, tiny_policy: Path, tmp_path: Path
) -> None:
    """The vLLM engine core dies (OOM killer, segfault): ready and live fail within seconds, the
    process exits non-zero, and no engine process is left behind, so the orchestrator restarts it."""
    args = [str(BIN), "serve", "--model", str(tiny_llama), "--generator", str(tiny_policy), "--port", "0"]
    args += ["--grpc-port", "0", "--generator-dtype", "float32", "--generator-max-model-len", "1024"]
    proc = subprocess.Popen(
        args, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while not (m := re.search(r"HTTP on http://[\d.]+:(\d+)", "".join(lines))):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines[-40:])
            time.sleep(0.2)
        url = f"http://127.0.0.1:{m.group(1)}"
        while httpx.get(f"{url}/health/ready", timeout=5).status_code != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines[-40:])
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        core = [p for p in children if p.name().startswith("VLLM::EngineCore")]
        assert core, f"no engine-core process among {[p.name() for p in children]}"
        core[0].kill()
        killed = time.monotonic()
        ready_failed = None
        while ready_failed is None and time.monotonic() - killed < 30:
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code != 200:
                    ready_failed = time.monotonic() - killed
            except httpx.TransportError:  # already gone: readiness fails too
                ready_failed = time.monotonic() - killed
            time.sleep(0.1)
        assert ready_failed is not None and ready_failed < 5, (ready_failed, "".join(lines[-40:]))
        assert proc.wait(60) != 0, "".join(lines[-40:])
        left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        left = psutil.wait_procs(left, timeout=20)[1]
        assert not left, f"processes outlived the server: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_generator_dir_fails_fast(tiny_llama: Path, tmp_path: Path) -> None:
    args = [str(BIN), "serve", "--model", str(tiny_llama), "--generator", str(tmp_path / "nope")]
    p = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--generator" in p.stderr and "not a directory" in p.stderr
