"""gRPC calls show up in /metrics: requests by method and status code, unary latency, refusals.

A real server (HTTP + gRPC over a tiny model) in a background thread; real sync gRPC stubs call it
and its own /metrics endpoint is read back over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc
from rewardserve.api.grpc.metrics import RequestMetricsInterceptor
from rewardserve.config import Settings
from rewardserve.metrics import Metrics
from rewardserve.testing.server_thread import ServerThread

SCORE = "/rewardserve.v1.RewardService/Score"
STREAM = "/rewardserve.v1.RewardService/ScoreStream"
HEALTH = "/grpc.health.v1.Health/Check"


@pytest.fixture(scope="module")
def srv(tiny_llama: Path) -> Iterator[ServerThread]:
    with ServerThread(Settings(model=tiny_llama, port=0, grpc_port=0)) as s:
        yield s


def _samples(srv: ServerThread) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{srv.http_url}/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _requests(s: dict[tuple[str, frozenset[tuple[str, str]]], float], method: str, code: str) -> float:
    key = frozenset({("transport", "grpc"), ("endpoint", method), ("code", code)})
    return s.get(("rewardserve_requests_total", key), 0.0)


def test_grpc_calls_are_counted_by_method_and_code(srv: ServerThread) -> None:
    before = _samples(srv)
    with grpc.insecure_channel(srv.grpc_target) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        for i in range(3):
            stub.Score(pb.ScoreRequest(inputs=[pb.Input(text="x" * (i + 1))]), timeout=60)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Score(pb.ScoreRequest(inputs=[pb.Input()]), timeout=60)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Score(pb.ScoreRequest(model="other", inputs=[pb.Input(text="x")]), timeout=60)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        messages = [pb.ScoreStreamRequest(id=str(i), inputs=[pb.Input(text="y")]) for i in range(2)]
        assert len(list(stub.ScoreStream(iter(messages), timeout=60))) == 2
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == 1
        with pytest.raises(grpc.RpcError) as unimplemented:
            channel.unary_unary("/rewardserve.v1.RewardService/Nope")(b"", timeout=30)
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = _samples(srv)

    def delta(method: str, code: str) -> float:
        return _requests(after, method, code) - _requests(before, method, code)

    assert delta(SCORE, "OK") == 3
    assert delta(SCORE, "INVALID_ARGUMENT") == 1
    assert delta(SCORE, "NOT_FOUND") == 1
    assert delta(STREAM, "OK") == 1  # one stream, however many messages
    assert delta(HEALTH, "OK") == 1
    # An unknown method is answered by grpc itself; counted under one label (no label per path).
    assert delta("unmatched", "UNIMPLEMENTED") == 1

    def count(name: str, labels: dict[str, str]) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    # Unary calls are timed (5 Score calls); the stream is counted but not timed.
    score_timing = {"transport": "grpc", "endpoint": SCORE}
    assert count("rewardserve_request_duration_seconds_count", score_timing) == 5
    stream_timing = {"transport": "grpc", "endpoint": STREAM}
    assert ("rewardserve_request_duration_seconds_count", frozenset(stream_timing.items())) not in after
    # Refusals share HTTP's reasons; NOT_FOUND is an answer, not a refusal.
    assert count("rewardserve_rejected_total", {"reason": "validation"}) == 1
    # Scoring through gRPC feeds the same model metrics as HTTP: 3 + 2 inputs were scored.
    assert count("rewardserve_reward_count", {"model": "default"}) == 5


async def test_interceptor_records_every_way_an_rpc_ends() -> None:
    """The interceptor alone on a bare grpc.aio server (port 0): success, abort, an exception that
    escapes the handler, and a client deadline that passes mid-call each get their own code."""
    metrics = Metrics()
    never = asyncio.Event()  # Hang waits on it until its deadline (or the server's stop) cancels it

    async def ok(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
        raise AssertionError("unreachable")

    async def crash(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise RuntimeError("bug")

    async def hang(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await never.wait()
        return request

    async def count_up(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        for i in range(3):
            yield bytes([i])

    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(ok),
        "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
        "Crash": grpc.unary_unary_rpc_method_handler(crash),
        "Hang": grpc.unary_unary_rpc_method_handler(hang),
        "Count": grpc.unary_stream_rpc_method_handler(count_up),
    }
    server = grpc.aio.server(interceptors=[RequestMetricsInterceptor(metrics)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary("/t.T/Ok")(b"x", timeout=10) == b"x"
            codes = []
            for method, timeout in (("Refuse", 10.0), ("Crash", 10.0), ("Hang", 0.5)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await channel.unary_unary(f"/t.T/{method}")(b"x", timeout=timeout)
                codes.append(err.value.code())
            assert codes == [
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ]
            assert [m async for m in channel.unary_stream("/t.T/Count")(b"", timeout=10)] == [
                b"\0",
                b"\1",
                b"\2",
            ]
    finally:
        await server.stop(grace=None)

    def counted(method: str, code: str) -> float | None:
        return metrics.registry.get_sample_value(
            "rewardserve_requests_total", {"transport": "grpc", "endpoint": f"/t.T/{method}", "code": code}
        )

    # A call whose deadline passed is cancelled on the server; it is counted as the client saw it.
    # Done-callbacks run on the server's loop after the call ends: poll briefly for that one.
    for _ in range(500):
        if counted("Hang", "DEADLINE_EXCEEDED") is not None:
            break
        await asyncio.sleep(0.01)
    assert counted("Ok", "OK") == 1
    assert counted("Refuse", "RESOURCE_EXHAUSTED") == 1
    assert counted("Crash", "UNKNOWN") == 1
    assert counted("Hang", "DEADLINE_EXCEEDED") == 1
    assert counted("Count", "OK") == 1
    for reason in ("overloaded", "timeout"):
        assert metrics.registry.get_sample_value("rewardserve_rejected_total", {"reason": reason}) == 1
    timed = metrics.registry.get_sample_value(
        "rewardserve_request_duration_seconds_count", {"transport": "grpc", "endpoint": "/t.T/Hang"}
    )
    assert timed == 1
