"""What a public endpoint meets: one error format on every failure, strict types, bounded input
refused before tokenizing, slow and idle connections, clients that hang up (README "Security").
Real servers over a tiny reward model (gated where the model must be held)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest

from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc
from rewardserve.app import RewardServer, load_scoring
from rewardserve.config import Settings
from rewardserve.metrics import Metrics
from rewardserve.scoring.types import Encoded, ScoreInput
from rewardserve.testing.gated import GatedModel, gated, gated_loader

pytestmark = pytest.mark.asyncio


async def _start(settings: Settings) -> RewardServer:
    metrics = Metrics()
    scoring = await load_scoring(settings, metrics, gated_loader)
    server = RewardServer(settings, metrics=metrics, scoring=scoring)
    await server.start()
    return server


def _settings(tiny_llama: Path, **extra: Any) -> Settings:
    return Settings(model=tiny_llama, port=0, max_input_tokens=256, compute_workers=1, **extra)


@pytest.fixture
async def server(tiny_llama: Path) -> AsyncIterator[RewardServer]:
    srv = await _start(_settings(tiny_llama, request_read_timeout_s=2.0))
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: RewardServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c:
        yield c


def _model(server: RewardServer) -> GatedModel:
    model = server.runtime.require_scoring().engine
    assert isinstance(model, GatedModel)
    return model


_JSON = {"content-type": "application/json"}


# --- one error format ---------------------------------------------------------------------------


async def test_every_error_is_the_error_format(client: httpx.AsyncClient) -> None:
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        (
            "POST",
            "/v1/score",
            {"content": b'{"inputs": [{"text": "\xff\xfe"}]}', "headers": _JSON},
            0,
        ),  # bad UTF-8
        (
            "POST",
            "/v1/score",
            {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}},
            422,
        ),
        ("POST", "/v1/score", {"json": {"inputs": [], "truncate": "yes"}}, 422),  # strict types
        ("POST", "/v1/score", {"json": {"inputs": [{"text": 5}]}}, 422),
        ("POST", "/v1/compare", {"json": {"pairs": [], "truncate": 1}}, 422),
        ("GET", "/no/such/route", {}, 404),
        ("GET", "/v1/score", {}, 405),
        ("DELETE", "/v1/models", {}, 405),
        ("POST", "/v2/models/default/infer", {"content": b"[" * 100_000 + b"]" * 100_000}, 422),
        ("POST", "/v1/score", {"content": b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"}, 422),
    ]
    for method, path, kwargs, status in cases:
        r = await client.request(method, path, **kwargs)
        assert r.status_code == status or (status == 0 and 400 <= r.status_code < 500), (method, path, r.text)
        body = r.json()
        assert set(body) == {"error", "type"} and body["error"], (method, path, body)
    deep = await client.post("/v2/models/default/infer", content=b"[" * 100_000 + b"]" * 100_000)
    assert "max-json-depth" in deep.json()["error"]
    # Valid inputs stay valid under strict types.
    ok = await client.post("/v1/score", json={"inputs": [{"text": "a"}], "truncate": True})
    assert ok.status_code == 200, ok.text


async def test_oversized_head_is_refused_in_the_error_format(tiny_llama: Path) -> None:
    srv = await _start(_settings(tiny_llama, max_header_bytes=2048))
    try:
        big = b"X-Big: " + b"a" * 6000 + b"\r\n"
        head = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        complete = await _closed_within(srv.http_port, head + big + b"\r\n", 30)
        assert complete.startswith(b"HTTP/1.1 431") and b"max-header-bytes" in complete
        # Never finished: h11 stops buffering at the limit. Small enough to arrive in one read, so the
        # server closes with nothing unread (no reset before the answer is read).
        incomplete = await _closed_within(srv.http_port, head + big, 30)
        assert incomplete.startswith(b"HTTP/1.1 400") and b'"type": "validation"' in incomplete
        assert b"max-header-bytes" in incomplete
    finally:
        await srv.stop()


# --- bounded input, refused before tokenizing -------------------------------------------------------


async def test_two_megabyte_string_is_refused_without_tokenizing(
    server: RewardServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(server)
    calls: list[ScoreInput] = []
    encode = model.encode

    def spy(inp: ScoreInput, *, truncate: bool) -> Encoded:
        calls.append(inp)
        return encode(inp, truncate=truncate)

    monkeypatch.setattr(model, "encode", spy)
    huge = "x" * (2 * 1024 * 1024)
    requests = [
        ("/v1/score", {"inputs": [{"text": "short"}, {"text": huge}]}),
        ("/v1/score", {"inputs": [{"prompt": "p", "response": huge}], "truncate": True}),
        ("/v1/compare", {"pairs": [{"prompt": "p", "a": "a", "b": huge}]}),
        ("/get_reward", {"query": [huge]}),
        (
            "/v2/models/default/infer",
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [huge]}]},
        ),
    ]
    for path, body in requests:
        r = await client.post(path, json=body)
        assert r.status_code in (413, 422), (path, r.text)
        assert r.json()["type"] == "validation"
        assert "input-chars-per-token" in r.json()["error"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Score(pb.ScoreRequest(inputs=[pb.Input(text=huge)]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert calls == []  # the tokenizer never saw any of it
    assert (await client.post("/v1/score", json={"inputs": [{"text": "short"}]})).status_code == 200


async def test_inputs_per_request_is_bounded(tiny_llama: Path) -> None:
    srv = await _start(_settings(tiny_llama, max_inputs_per_request=4))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}") as c:
            r = await c.post("/v1/score", json={"inputs": [{"text": "a"}] * 5})
            assert r.status_code == 422 and "limit is 4" in r.json()["error"]
    finally:
        await srv.stop()


# --- connections --------------------------------------------------------------------------------


async def _closed_within(port: int, send: bytes, seconds: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if send:
        writer.write(send)
        await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), seconds)  # b"" or an answer, then EOF
    finally:
        writer.close()


async def test_idle_incomplete_and_slow_connections_are_closed(server: RewardServer) -> None:
    # request_read_timeout_s=2: closed long before the 30 s bound below. The three connections are
    # independent, each with its own deadline on the server, so they wait out their 2 s together.
    head = (
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    idle, incomplete, answer = await asyncio.gather(
        _closed_within(server.http_port, b"", 30),
        _closed_within(server.http_port, b"POST /v1/score HTTP/1.1\r\nHost: x\r\n", 30),
        _closed_within(server.http_port, head + b'{"inputs"', 30),
    )
    assert idle == b""
    assert incomplete == b""
    assert answer.startswith(b"HTTP/1.1 408") and b'"type":"timeout"' in answer.replace(b" ", b"")


async def test_connections_over_the_cap_get_503(tiny_llama: Path) -> None:
    srv = await _start(_settings(tiny_llama, max_connections=5))
    held = [await asyncio.open_connection("127.0.0.1", srv.http_port) for _ in range(5)]
    try:
        answer = await _closed_within(srv.http_port, b"", 30)
        assert answer.startswith(b"HTTP/1.1 503") and b'"type": "overloaded"' in answer
    finally:
        for _, writer in held:
            writer.close()
        await srv.stop()


async def test_health_answers_while_slow_clients_hold_connections(server: RewardServer) -> None:
    port = server.http_port
    idle = []
    for _ in range(500):  # blocking sockets: opening 500 is quick and needs no event loop turns
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")  # an incomplete head, never finished
        idle.append(s)
    big = b'{"inputs": [' + b",".join([b'{"text": "' + b"y" * 2000 + b'"}'] * 2000) + b"]}"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            parsing = [asyncio.create_task(c.post("/v1/score", content=big)) for _ in range(3)]
            worst = 0.0
            for _ in range(5):
                t0 = time.perf_counter()
                r = await c.get("/health/live")
                worst = max(worst, time.perf_counter() - t0)
                assert r.status_code == 200
                await asyncio.sleep(0.05)
            await asyncio.gather(*parsing)
        assert worst < 1.0, f"/health/live took {worst:.2f}s"
    finally:
        for s in idle:
            s.close()


# --- cancellation on every door -------------------------------------------------------------------


def _body(path: str, text: str) -> dict[str, Any]:
    if path == "/v1/score":
        return {"inputs": [{"text": text}]}
    if path == "/get_reward":
        return {"query": [text]}
    if path == "/v1/compare":
        return {"pairs": [{"prompt": text, "a": "a", "b": "b"}]}
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}


async def _send(
    port: int, path: str, body: dict[str, Any]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    return reader, writer


def _cancelled(server: RewardServer) -> float:
    return server.runtime.metrics.rejected.labels("cancelled")._value.get()


@pytest.mark.parametrize("path", ["/v1/score", "/get_reward", "/v1/compare", "/v2/models/default/infer"])
async def test_clients_that_hang_up_never_reach_the_model(server: RewardServer, path: str) -> None:
    per_request = 2 if path == "/v1/compare" else 1
    with gated(_model(server)) as gate:
        blocker = await _send(server.http_port, "/v1/score", {"inputs": [{"text": "blocker"}]})
        assert await asyncio.to_thread(gate.entered.wait, 30)  # the one compute thread is held
        clients = [await _send(server.http_port, path, _body(path, f"text {i}")) for i in range(100)]
        scoring = server.runtime.require_scoring()
        for _ in range(600):  # every request admitted and waiting (its items queued)
            if scoring.in_flight >= 101:
                break
            await asyncio.sleep(0.05)
        before = _cancelled(server)
        for _, writer in clients[::2]:  # 50 of 100 hang up
            writer.close()
        for _ in range(600):
            if _cancelled(server) - before >= 50:
                break
            await asyncio.sleep(0.05)
        assert _cancelled(server) - before == 50
        seen_before = len(gate.seen)
        gate.release.set()
        for reader, _ in [blocker, *clients[1::2]]:
            status = await asyncio.wait_for(reader.readline(), 60)
            assert status.startswith(b"HTTP/1.1 200"), status
    reached = len(gate.seen) - seen_before
    assert reached == 50 * per_request  # only the requests still wanted were computed
    for _, writer in [blocker, *clients[1::2]]:
        writer.close()


# --- ScoreStream: a client that never reads --------------------------------------------------------


async def test_score_stream_reader_that_never_reads_is_bounded(tiny_llama: Path) -> None:
    srv = await _start(_settings(tiny_llama, stream_max_pending=8))
    try:
        # A small, fixed receive window on the client (no BDP growth): a client that never reads
        # fills it after a few dozen answers, which is when the server must stop taking requests.
        options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}", options=options) as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            big = "z " * 800  # each answer is small; requests are what a flood would send
            sent = 0

            async def requests() -> AsyncIterator[pb.ScoreStreamRequest]:
                nonlocal sent
                for i in range(100_000):
                    sent += 1
                    yield pb.ScoreStreamRequest(id=str(i), inputs=[pb.Input(text=big)], truncate=True)

            call = stub.ScoreStream(requests())
            scoring = srv.runtime.require_scoring()
            scored = srv.runtime.metrics.inputs_scored.labels(scoring.name)
            counts, sends = [], []
            for _ in range(8):  # the server answers, then stops reading; this client never reads
                await asyncio.sleep(1)
                counts.append(scored._value.get())
                sends.append(sent)
                assert scoring.in_flight <= 8
            # What the server took stops growing (the answers it could not write hold their slots, so
            # it stops reading requests), and HTTP/2 flow control then stalls the sender: what the
            # stream holds on either side is bounded by the windows, not by how long it runs.
            assert counts[-1] == counts[-3] <= 200
            assert sends[-1] == sends[-3]
            got = 0
            async for _ in call:  # reading again lets the stream move on
                got += 1
                if got == 50:
                    break
            call.cancel()
    finally:
        await srv.stop()
