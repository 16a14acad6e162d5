"""The native gRPC API, health, reflection and error mapping, on a real server over a real tiny model.

The server runs in a background thread (rewardserve.testing.server_thread) so that the blocking
clients used here (grpc's sync stubs, grpcio-health-checking, grpcio-reflection, httpx) can call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import rewardserve.app as app_module
from rewardserve._proto.inference import grpc_service_pb2 as kserve_pb2
from rewardserve._proto.inference import grpc_service_pb2_grpc as kserve_grpc
from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc
from rewardserve.config import Settings
from rewardserve.errors import (
    AuthError,
    DeadlineExceeded,
    Draining,
    InputError,
    ModelNotFound,
    NotReady,
    Overloaded,
)
from rewardserve.scoring.service import ScoringModel
from rewardserve.scoring.types import ScoreInput
from rewardserve.testing.gated import gated, gated_loader
from rewardserve.testing.server_thread import ServerThread

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "rewardserve.v1.RewardService", "inference.GRPCInferenceService")


@pytest.fixture(scope="module")
def srv(tiny_llama: Path) -> Iterator[ServerThread]:
    with ServerThread(Settings(model=tiny_llama, port=0, grpc_port=0, max_input_tokens=256)) as s:
        yield s


@pytest.fixture(scope="module")
def channel(srv: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(srv.grpc_target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.RewardServiceStub:
    return pb_grpc.RewardServiceStub(channel)


@pytest.fixture(scope="module")
def http(srv: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.http_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def tight(tiny_llama: Path) -> Iterator[ServerThread]:
    """Small limits: two calls in flight at most, 64 KiB gRPC messages, one compute worker (so one
    gated batch makes the model busy: a second worker would run a queued call at once)."""
    settings = Settings(
        model=tiny_llama,
        port=0,
        grpc_port=0,
        max_queued_requests=2,
        grpc_max_message_bytes=64 * 1024,
        compute_workers=1,
    )
    with ServerThread(settings, load_model=gated_loader) as s:
        yield s


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


def text_request(*texts: str) -> pb.ScoreRequest:
    return pb.ScoreRequest(inputs=[pb.Input(text=t) for t in texts])


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# --------------------------------------------------------------------------- native API


def test_score_matches_http(stub: pb_grpc.RewardServiceStub, http: httpx.Client) -> None:
    inputs = [
        {"prompt": "2+2?", "response": "4"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"text": "some raw text"},
    ]
    want = http.post("/v1/score", json={"inputs": inputs}).json()
    got = stub.Score(
        pb.ScoreRequest(
            model="default",
            inputs=[
                pb.Input(prompt="2+2?", response="4"),
                pb.Input(
                    messages=[
                        pb.ChatMessage(role="user", content="hi"),
                        pb.ChatMessage(role="assistant", content="hello"),
                    ]
                ),
                pb.Input(text="some raw text"),
            ],
        ),
        timeout=60,
    )
    assert got.model == want["model"] == "default"
    assert list(got.scores) == pytest.approx(want["scores"], abs=1e-6)
    assert len(set(got.scores)) == 3
    assert [(d.tokens, d.truncated) for d in got.details] == [
        (d["tokens"], d["truncated"]) for d in want["details"]
    ]
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert stub.Score(pb.ScoreRequest(), timeout=30).scores == []


def test_truncate_and_too_long(stub: pb_grpc.RewardServiceStub) -> None:
    long = pb.Input(prompt="story", response=" ".join(["word"] * 600))
    err = rpc_error(lambda: stub.Score(pb.ScoreRequest(inputs=[pb.Input(text="ok"), long]), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[1]" in err.details() and "truncate" in err.details()
    got = stub.Score(pb.ScoreRequest(inputs=[long], truncate=True), timeout=30)
    assert (got.details[0].tokens, got.details[0].truncated) == (256, True)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (pb.Input(prompt="only a prompt"), '"prompt" and "response" go together'),
        (pb.Input(text="a", prompt="b", response="c"), "exactly one of"),
        (pb.Input(), "exactly one of"),
        (pb.Input(messages=[pb.ChatMessage(role="", content="x")]), "messages.0.role"),
    ],
)
def test_invalid_input_is_invalid_argument(
    stub: pb_grpc.RewardServiceStub, bad: pb.Input, message: str
) -> None:
    err = rpc_error(lambda: stub.Score(pb.ScoreRequest(inputs=[pb.Input(text="fine"), bad]), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("inputs[1]: ") and message in err.details()


def test_unknown_model_is_not_found(stub: pb_grpc.RewardServiceStub) -> None:
    err = rpc_error(
        lambda: stub.Score(pb.ScoreRequest(model="other", inputs=[pb.Input(text="x")]), timeout=30)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND and "'default'" in err.details()


def test_list_models(stub: pb_grpc.RewardServiceStub, http: httpx.Client) -> None:
    (card,) = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
    want = http.get("/v1/models").json()["data"][0]
    assert (card.id, card.max_input_tokens, card.dtype, card.device, card.head) == (
        want["id"],
        want["max_input_tokens"],
        want["dtype"],
        want["device"],
        want["head"],
    )
    assert card.batch_strategy == want["batch_strategy"] and card.chat_template == want["chat_template"]
    assert card.kernels == want["kernels"] and want["kernels"] in ("fused-onednn", "fused")


def test_compare_is_bradley_terry_on_both_transports(
    stub: pb_grpc.RewardServiceStub, http: httpx.Client
) -> None:
    pairs = [("What is 2+2?", "4", "5"), ("Capital of France?", "Paris", "London"), ("hi", "hello", "")]
    scores = http.post(
        "/v1/score",
        json={"inputs": [{"prompt": p, "response": r} for p, a, b in pairs for r in (a, b)]},
    ).json()["scores"]
    margins = [scores[2 * i] - scores[2 * i + 1] for i in range(len(pairs))]
    got = stub.Compare(
        pb.CompareRequest(pairs=[pb.Pair(prompt=p, a=a, b=b) for p, a, b in pairs]), timeout=60
    )
    body = http.post("/v1/compare", json={"pairs": [{"prompt": p, "a": a, "b": b} for p, a, b in pairs]})
    assert body.status_code == 200, body.text
    want = body.json()
    assert got.model == want["model"] == "default"
    for result in (list(got.margins), want["margins"]):
        assert result == pytest.approx(margins, abs=1e-6)
    for probs in (list(got.probabilities), want["probabilities"]):
        assert probs == pytest.approx([1 / (1 + math.exp(-m)) for m in margins], abs=1e-9)
    assert stub.Compare(pb.CompareRequest(), timeout=30).margins == []
    assert http.post("/v1/compare", json={"pairs": []}).json()["margins"] == []


def test_compare_errors_name_the_pair(stub: pb_grpc.RewardServiceStub, http: httpx.Client) -> None:
    long = " ".join(["word"] * 600)
    pairs = [{"prompt": "p", "a": "fine", "b": "fine too"}, {"prompt": "p", "a": "fine", "b": long}]
    r = http.post("/v1/compare", json={"pairs": pairs})
    assert r.status_code == 422 and r.json()["error"].startswith("pairs[1].b: ")
    err = rpc_error(lambda: stub.Compare(pb.CompareRequest(pairs=[pb.Pair(**p) for p in pairs]), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("pairs[1].b: ")
    assert http.post("/v1/compare", json={"pairs": pairs, "truncate": True}).status_code == 200
    assert http.post("/v1/compare", json={"pairs": [{"prompt": "p", "a": "x"}]}).status_code == 422


def test_score_stream_1000_messages(stub: pb_grpc.RewardServiceStub, http: httpx.Client) -> None:
    texts = [f"message number {i} " + "word " * (i % 23) for i in range(1000)]
    expected = http.post("/v1/score", json={"inputs": [{"text": t} for t in texts]}).json()["scores"]
    bad = {17, 500, 999}  # invalid inputs: answered with an error, the stream goes on

    def requests() -> Iterator[pb.ScoreStreamRequest]:
        for i, t in enumerate(texts):
            inputs = [pb.Input(prompt=t)] if i in bad else [pb.Input(text=t)]
            yield pb.ScoreStreamRequest(id=f"id-{i}", inputs=inputs)
        yield pb.ScoreStreamRequest(id="several", inputs=[pb.Input(text=t) for t in texts[:3]])

    answers: dict[str, pb.ScoreStreamResponse] = {}
    for answer in stub.ScoreStream(requests(), timeout=300):
        assert answer.id not in answers, f"answered twice: {answer.id}"
        answers[answer.id] = answer
    assert len(answers) == 1001
    for i in range(1000):
        answer = answers[f"id-{i}"]
        if i in bad:
            assert answer.WhichOneof("result") == "error"
            assert answer.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "go together" in answer.error.message
        else:
            assert answer.WhichOneof("result") == "response"
            assert answer.response.scores[0] == pytest.approx(expected[i], abs=1e-6)
    assert list(answers["several"].response.scores) == pytest.approx(expected[:3], abs=1e-6)


def test_cancelled_stream_leaves_nothing_behind(srv: ServerThread, stub: pb_grpc.RewardServiceStub) -> None:
    """A client that walks away mid-stream: its in-flight messages are abandoned, the server is idle
    again and keeps serving."""

    def endless() -> Iterator[pb.ScoreStreamRequest]:
        for i in range(100_000):
            yield pb.ScoreStreamRequest(id=str(i), inputs=[pb.Input(text=f"endless {i} " + "word " * 50)])

    call = stub.ScoreStream(endless(), timeout=120)
    for n, _ in enumerate(call):
        if n == 20:
            break
    call.cancel()
    wait_for(lambda: srv.scoring.in_flight == 0 and srv.scoring.batcher.queued_requests == 0)
    assert len(stub.Score(text_request("still serving"), timeout=60).scores) == 1


# --------------------------------------------------------------------------- error mapping

_CASES = [
    (InputError("bad field", index=2), grpc.StatusCode.INVALID_ARGUMENT, "inputs[2]: bad field"),
    (ModelNotFound("model 'x' is not served here"), grpc.StatusCode.NOT_FOUND, "not served here"),
    (Overloaded("full", retry_after_s=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED, "at capacity"),
    (Draining("closing"), grpc.StatusCode.UNAVAILABLE, "draining"),
    (NotReady("model is still loading"), grpc.StatusCode.UNAVAILABLE, "still loading"),
    (DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"),
    (AuthError("missing token"), grpc.StatusCode.UNAUTHENTICATED, "missing token"),
    (
        RuntimeError("boom at /secret/path/model.py"),
        grpc.StatusCode.INTERNAL,
        "internal error; see the server log",
    ),
]


@pytest.mark.parametrize(("exc", "code", "message"), _CASES, ids=[type(c[0]).__name__ for c in _CASES])
def test_interceptor_maps_every_error(
    srv: ServerThread,
    channel: grpc.Channel,
    monkeypatch: pytest.MonkeyPatch,
    exc: Exception,
    code: grpc.StatusCode,
    message: str,
) -> None:
    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(srv.scoring, "score", failing)
    stub = pb_grpc.RewardServiceStub(channel)
    err = rpc_error(lambda: stub.Score(text_request("x"), timeout=30))
    assert err.code() == code and message in err.details()
    assert "/secret" not in err.details() and "Traceback" not in err.details()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert dict(err.trailing_metadata())["retry-after"] == "3"
    # The same table answers a stream message, which fails alone.
    (answer,) = stub.ScoreStream(
        iter([pb.ScoreStreamRequest(id="m", inputs=[pb.Input(text="x")])]), timeout=30
    )
    assert answer.error.code == code.value[0] and message in answer.error.message
    # And the KServe service.
    infer = kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer
    request = kserve_pb2.ModelInferRequest(model_name="default")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    err = rpc_error(lambda: infer(request, timeout=30))
    assert err.code() == code and message in err.details()


def test_overload_is_resource_exhausted(tight: ServerThread) -> None:
    stub = pb_grpc.RewardServiceStub(grpc.insecure_channel(tight.grpc_target))
    batcher = tight.scoring.batcher
    with gated(tight.scoring.engine) as gate, ThreadPoolExecutor(2) as pool:
        first = pool.submit(stub.Score, text_request("first"), timeout=60)
        assert gate.entered.wait(30)
        second = pool.submit(stub.Score, text_request("second"), timeout=60)
        wait_for(lambda: batcher.queued_requests == 2)  # max_queued_requests reached
        err = rpc_error(lambda: stub.Score(text_request("third"), timeout=30))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(err.trailing_metadata())["retry-after"]) >= 1
        gate.release.set()
        assert len(first.result(60).scores) == len(second.result(60).scores) == 1


def test_client_deadline_reaches_the_batcher(tight: ServerThread) -> None:
    """A call whose deadline passes while the model is busy fails with DEADLINE_EXCEEDED, and its
    input never reaches the model."""
    stub = pb_grpc.RewardServiceStub(grpc.insecure_channel(tight.grpc_target))
    engine = tight.scoring.engine
    late = "this one expires while the model is busy"
    batcher = tight.scoring.batcher
    with gated(engine) as gate, ThreadPoolExecutor(2) as pool:
        first = pool.submit(stub.Score, text_request("first"), timeout=60)
        assert gate.entered.wait(30)
        expiring = pool.submit(stub.Score, text_request(late), timeout=2.0)
        wait_for(lambda: batcher.queued_requests == 2)  # admitted and queued behind the gated batch
        err = rpc_error(lambda: expiring.result(30))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: batcher.queued_requests == 1)  # the expired call is gone
        gate.release.set()
        assert len(first.result(60).scores) == 1
        assert len(stub.Score(text_request("after"), timeout=60).scores) == 1
    expired = engine.encode(ScoreInput(text=late), truncate=False).input_ids
    assert gate.seen and expired not in gate.seen


def test_oversize_message_is_refused_clearly(tight: ServerThread) -> None:
    stub = pb_grpc.RewardServiceStub(grpc.insecure_channel(tight.grpc_target))
    err = rpc_error(lambda: stub.Score(text_request("x" * 100_000), timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.details() and "65536" in err.details()
    assert len(stub.Score(text_request("small"), timeout=30).scores) == 1


# --------------------------------------------------------------------------- health and reflection


def test_health_check_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in SERVICES:
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == SERVING
    err = rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_every_service(channel: grpc.Channel, http: httpx.Client) -> None:
    db = ProtoReflectionDescriptorDatabase(channel)
    assert set(db.get_services()) >= {
        "rewardserve.v1.RewardService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    pool = descriptor_pool.DescriptorPool(db)
    assert [m.name for m in pool.FindServiceByName("rewardserve.v1.RewardService").methods] == [
        "Score",
        "ScoreStream",
        "Compare",
        "ListModels",
    ]
    infer = pool.FindMessageTypeByName("inference.ModelInferRequest")
    assert infer.fields_by_name["raw_input_contents"].number == 7
    # A client that knows nothing but what reflection told it can call the service.
    request_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("rewardserve.v1.ScoreRequest"))
    response_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("rewardserve.v1.ScoreResponse"))
    score = channel.unary_unary(
        "/rewardserve.v1.RewardService/Score",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    reply = score(json_format.ParseDict({"inputs": [{"text": "hello"}]}, request_cls()), timeout=30)
    want = http.post("/v1/score", json={"inputs": [{"text": "hello"}]}).json()["scores"]
    assert list(reply.scores) == pytest.approx(want, abs=1e-6)


def test_health_follows_loading_and_draining(tiny_llama: Path) -> None:
    """NOT_SERVING while the model loads, SERVING once warm, NOT_SERVING again as soon as a drain
    begins; in-flight calls finish during the drain and new ones get UNAVAILABLE."""
    release = threading.Event()

    async def held_load(settings: Settings) -> ScoringModel:
        assert await asyncio.to_thread(release.wait, 60)
        return await gated_loader(settings)

    settings = Settings(model=tiny_llama, port=0, grpc_port=0)
    srv = ServerThread(settings, preload=False, load_model=held_load).start()
    statuses: queue.Queue[int] = queue.Queue()
    channel = grpc.insecure_channel(srv.grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # ends when the server goes away or we cancel
            for update in watch:
                statuses.put(update.status)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    stub = pb_grpc.RewardServiceStub(channel)
    try:
        assert statuses.get(timeout=30) == NOT_SERVING
        for service in SERVICES:
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == NOT_SERVING
            )
        err = rpc_error(lambda: stub.Score(text_request("x"), timeout=30))
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "loading" in err.details()
        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        assert not kserve.ServerReady(kserve_pb2.ServerReadyRequest(), timeout=10).ready

        release.set()
        assert statuses.get(timeout=120) == SERVING
        assert kserve.ServerReady(kserve_pb2.ServerReadyRequest(), timeout=10).ready
        assert len(stub.Score(text_request("ready now"), timeout=60).scores) == 1

        with gated(srv.scoring.engine) as gate, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(stub.Score, text_request("in flight"), timeout=60)
            assert gate.entered.wait(30)
            stopping = asyncio.run_coroutine_threadsafe(srv.server.stop(), srv.loop)
            assert statuses.get(timeout=30) == NOT_SERVING
            assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == NOT_SERVING
            err = rpc_error(lambda: stub.Score(text_request("new"), timeout=30))
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "draining" in err.details()
            assert not stopping.done()  # the drain waits for the gated call
            gate.release.set()
            assert len(in_flight.result(60).scores) == 1
            stopping.result(60)
    finally:
        release.set()
        watch.cancel()
        channel.close()
        srv.stop()
        follower.join(30)


async def test_grpc_port_in_use_fails_clearly(tiny_llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`rewardserve serve` on a taken gRPC port exits 1 with one clear line, before loading anything."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = await app_module.serve(Settings(model=tiny_llama, port=0, grpc_port=port))
    assert code == 1
    assert f"gRPC cannot listen on 127.0.0.1:{port}" in caplog.text and "--grpc-port" in caplog.text
