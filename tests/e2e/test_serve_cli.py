"""`rewardserve serve` as a user runs it: a subprocess, health polling, scoring, SIGTERM drain."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent / "rewardserve"


class Proc:
    """A running server process whose stderr is collected in the background."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            [str(BIN), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._port: int | None = None
        self._port_seen = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)
            m = re.search(r"HTTP on http://[\d.]+:(\d+)", line)
            if m:
                self._port = int(m.group(1))
                self._port_seen.set()

    def port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self._port_seen.wait(0.1):
            if self.p.poll() is not None:
                pytest.fail(f"server exited early ({self.p.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start in {timeout}s:\n{self.log()}")
        assert self._port is not None
        return self._port

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                pytest.fail(f"server exited ({self.p.returncode}):\n{self.log()}")
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return "".join(self.lines[-60:])

    def full_log(self) -> str:
        """All of stderr, once the process has exited and the reader has seen end of file."""
        self._reader.join(10)
        return "".join(self.lines)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", REWARDSERVE_CACHE_DIR=str(tmp_path / "cache"))
    return e


@pytest.fixture
def served(tiny_llama: Path, env: dict[str, str]) -> Iterator[tuple[Proc, str]]:
    env["REWARDSERVE_MAX_INPUT_TOKENS"] = "128"  # set through the environment, not a flag
    proc = Proc(["serve", "--model", str(tiny_llama), "--port", "0"], env)
    try:
        url = f"http://127.0.0.1:{proc.port(60)}"
        proc.wait_ready(url, 60)
        yield proc, url
    finally:
        proc.close()


def test_serve_score_and_sigterm_drains(served: tuple[Proc, str]) -> None:
    proc, url = served
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert models[0]["max_input_tokens"] == 128  # REWARDSERVE_MAX_INPUT_TOKENS reached the Settings
    r = httpx.post(f"{url}/v1/score", json={"inputs": [{"prompt": "hi", "response": "hello"}]})
    assert r.status_code == 200 and len(r.json()["scores"]) == 1

    # Many requests in flight, then SIGTERM once the server has admitted every one of them: each
    # request sent before the signal must be answered 200 (drain finishes accepted work), and the
    # process exits 0.
    body = {"inputs": [{"text": "word " * 40}] * 8}
    n = 16
    with ThreadPoolExecutor(n) as pool, httpx.Client(timeout=60) as c:
        futures = [pool.submit(c.post, f"{url}/v1/score", json=body) for _ in range(n)]
        deadline = time.monotonic() + 60
        while True:
            done = sum(f.done() for f in futures)  # read before the queue, so nothing is counted twice
            if done + _queue_depth(url) >= n:
                break
            assert time.monotonic() < deadline, f"the server admitted only {done} + queued of {n} requests"
            time.sleep(0.01)
        proc.p.send_signal(signal.SIGTERM)
        codes = [f.result().status_code for f in futures]
    assert proc.p.wait(60) == 0, proc.log()
    assert codes == [200] * n, codes
    # A clean end: it says what it drained, and nothing is dumped at interpreter exit (a heap left
    # frozen made triton's nanobind bindings print ~40 "leaked ..." lines).
    stderr = proc.full_log()
    assert re.search(r"shutdown complete: drained \d+ scoring", stderr), stderr[-3000:]
    assert "leaked" not in stderr, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]


def _queue_depth(url: str) -> int:
    """Scoring requests the server has admitted and not yet answered (its own gauge)."""
    text = httpx.get(f"{url}/metrics").text
    return sum(int(float(v)) for v in re.findall(r"^rewardserve_queue_depth\{[^}]*\} (\S+)$", text, re.M))


def test_bad_model_path_fails_fast(env: dict[str, str], tmp_path: Path) -> None:
    p = subprocess.run(
        [str(BIN), "serve", "--model", str(tmp_path / "missing")], env=env, capture_output=True, text=True
    )
    assert p.returncode == 2 and "not a directory" in p.stderr


def test_invalid_setting_is_explained(env: dict[str, str]) -> None:
    env["REWARDSERVE_MAX_BATCH_TOKENS"] = "-5"
    p = subprocess.run([str(BIN), "serve"], env=env, capture_output=True, text=True, timeout=60)
    # Named as the user sets it: the flag and the environment variable.
    assert p.returncode == 2 and "--max-batch-tokens (REWARDSERVE_MAX_BATCH_TOKENS)" in p.stderr, p.stderr


def test_serve_with_reward_functions_from_flags(
    tiny_llama: Path, env: dict[str, str], tmp_path: Path
) -> None:
    # --reward-fn NAME (a built-in) and NAME=path/file.py:function, repeatable, beside the model.
    (tmp_path / "fns.py").write_text(
        "def longer(*, prompt, response, label, metadata, **kw):\n"
        "    if response == 'boom':\n"
        "        raise RuntimeError('no')\n"
        "    return {'score': float(len(response) > len(label or '')), 'label': label}\n"
    )
    args = ["serve", "--model", str(tiny_llama), "--port", "0", "--grpc-port", "0"]
    args += ["--reward-fn", "math", "--reward-fn", f"longer={tmp_path / 'fns.py'}:longer"]
    proc = Proc(args, env)
    try:
        url = f"http://127.0.0.1:{proc.port(60)}"
        proc.wait_ready(url, 120)
        kinds = {c["id"]: c["kind"] for c in httpx.get(f"{url}/v1/models").json()["data"]}
        assert kinds == {"default": "model", "math": "function", "longer": "function"}
        # slime's body, routed by name.
        r = httpx.post(
            f"{url}/v1/reward/math", json={"prompt": "1+1?", "response": "\\boxed{2}", "label": "2"}
        )
        assert r.json() == {"reward": 1.0, "status": "ok", "mask": False, "answer": "2"}
        body = {"model": "longer", "inputs": [{"text": "abc", "label": "a"}, {"text": "boom", "label": "a"}]}
        out = httpx.post(f"{url}/v1/score", json=body, timeout=60).json()
        assert out["scores"] == [1.0, None] and out["details"][0]["extras"] == {"label": "a"}
        assert out["details"][1]["status"] == "error"
        assert httpx.post(f"{url}/v1/score", json={"inputs": [{"text": "x"}]}).json()["model"] == "default"
        proc.p.send_signal(signal.SIGTERM)
        assert proc.p.wait(60) == 0, proc.full_log()
    finally:
        proc.close()
