"""`rewardserve serve` as a subprocess serving HTTP and gRPC together; SIGTERM under gRPC load."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc

BIN = Path(sys.executable).parent / "rewardserve"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Served:
    """A `rewardserve serve` process; its log lines give the ports it bound."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            [str(BIN), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._both = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)
            for kind, pattern in (
                ("http", r"HTTP on http://[\d.]+:(\d+)"),
                ("grpc", r"gRPC on [\d.]+:(\d+)"),
            ):
                m = re.search(pattern, line)
                if m:
                    self.ports[kind] = int(m.group(1))
            if len(self.ports) == 2:
                self._both.set()

    def wait_ports(self, timeout: float) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while not self._both.wait(0.1):
            if self.p.poll() is not None:
                pytest.fail(f"server exited early ({self.p.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no ports logged in {timeout}s:\n{self.log()}")
        return self.ports["http"], self.ports["grpc"]

    def log(self) -> str:
        return "".join(self.lines[-60:])

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(30)


@pytest.fixture
def served(tiny_llama: Path, tmp_path: Path) -> Iterator[tuple[Served, str, str]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", REWARDSERVE_CACHE_DIR=str(tmp_path))
    proc = Served(["serve", "--model", str(tiny_llama), "--port", "0", "--grpc-port", "0"], env)
    try:
        http_port, grpc_port = proc.wait_ports(90)
        yield proc, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        proc.close()


def _wait_serving(health: health_pb2_grpc.HealthStub, proc: Served, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            pytest.fail(f"server exited ({proc.p.returncode}):\n{proc.log()}")
        with contextlib.suppress(grpc.RpcError):
            if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == SERVING:
                return
        time.sleep(0.1)
    pytest.fail(f"gRPC health not SERVING in {timeout}s:\n{proc.log()}")


def test_sigterm_during_grpc_load(served: tuple[Served, str, str]) -> None:
    proc, url, target = served
    channel = grpc.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    _wait_serving(health, proc, 90)
    stub = pb_grpc.RewardServiceStub(channel)

    # One process, one scoring service: the same input gets the same score through either door.
    want = httpx.post(f"{url}/v1/score", json={"inputs": [{"prompt": "hi", "response": "hello"}]}).json()
    got = stub.Score(pb.ScoreRequest(inputs=[pb.Input(prompt="hi", response="hello")]), timeout=30)
    assert list(got.scores) == pytest.approx(want["scores"], abs=1e-6)

    statuses: list[int] = []
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=120)

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):
            for update in watch:
                statuses.append(update.status)

    # A stream that keeps sending until the server stops reading it, with its answers timed.
    stop_sending = threading.Event()
    answers: list[tuple[float, pb.ScoreStreamResponse]] = []
    stream_end: list[grpc.RpcError | None] = []

    def messages() -> Iterator[pb.ScoreStreamRequest]:
        for i in range(20_000):
            if stop_sending.is_set():
                return
            yield pb.ScoreStreamRequest(
                id=str(i), inputs=[pb.Input(text=f"stream message {i} " + "word " * 30)]
            )
            if i % 64 == 63:  # let answers catch up instead of queueing the whole stream in memory
                while len(answers) < i - 256 and not stop_sending.is_set():
                    time.sleep(0.005)

    def stream() -> None:
        try:
            for answer in stub.ScoreStream(messages(), timeout=120):
                answers.append((time.monotonic(), answer))
            stream_end.append(None)
        except grpc.RpcError as exc:
            stream_end.append(exc)

    # Unary load next to it.
    unary: list[tuple[grpc.StatusCode, str, float]] = []  # (code, details, when the call was sent)
    stop_unary = threading.Event()

    def unary_load() -> None:
        while not stop_unary.is_set():
            sent = time.monotonic()
            try:
                stub.Score(pb.ScoreRequest(inputs=[pb.Input(text="unary " + "word " * 40)] * 4), timeout=60)
                unary.append((grpc.StatusCode.OK, "", sent))
            except grpc.RpcError as exc:
                unary.append((exc.code(), exc.details() or "", sent))
                if exc.code() == grpc.StatusCode.UNAVAILABLE and proc.p.poll() is not None:
                    return

    threads = [threading.Thread(target=f, daemon=True) for f in (follow, stream, unary_load, unary_load)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while (len(answers) < 100 or statuses[-1:] != [SERVING]) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for load to be flowing, bounded
    assert len(answers) >= 100 and statuses[-1:] == [SERVING], proc.log()

    sigterm_at = time.monotonic()
    proc.p.send_signal(signal.SIGTERM)
    assert proc.p.wait(60) == 0, proc.log()
    stop_sending.set()
    stop_unary.set()
    for t in threads:
        t.join(60)
    channel.close()

    # Health flipped to NOT_SERVING when the drain began.
    assert statuses[0] == SERVING and statuses[-1] == NOT_SERVING, statuses
    # In-flight stream messages were answered during the drain, all successfully or refused as
    # draining; then the server ended the stream with UNAVAILABLE before closing its listener.
    after = [a for t, a in answers if t >= sigterm_at]
    assert after, "no stream message was in flight at SIGTERM"
    for _, answer in answers:
        if answer.HasField("error"):
            assert answer.error.code == grpc.StatusCode.UNAVAILABLE.value[0], answer
    (end,) = stream_end
    assert end is not None and end.code() == grpc.StatusCode.UNAVAILABLE, end
    assert "draining" in (end.details() or ""), end  # ended by the server's drain, not cut off
    # Unary calls sent before SIGTERM were in flight: answered, or refused as draining if they had not
    # reached the batcher yet. Calls sent after it are refused; one racing the listener's final close
    # may see CANCELLED from gRPC itself (it never reached our code), never a half-done answer.
    before = [(code, details) for code, details, sent in unary if sent < sigterm_at]
    after_sigterm = [(code, details) for code, details, sent in unary if sent >= sigterm_at]
    assert {code for code, _ in before} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, before
    assert grpc.StatusCode.OK in {code for code, _ in before}
    ok_after = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert {code for code, _ in after_sigterm} <= ok_after, after_sigterm
    for code, details in before + after_sigterm:
        if code == grpc.StatusCode.UNAVAILABLE:
            assert "draining" in details or "connect" in details.lower(), details
    # And after exit nothing answers.
    with grpc.insecure_channel(target) as late:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RewardServiceStub(late).Score(pb.ScoreRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
