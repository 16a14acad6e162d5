"""Faults a long-running public endpoint meets, against a real server over a tiny model wrapped in
``GatedModel`` (a forward that hangs, is slow, returns NaN, runs out of memory, or kills the batcher):
health sees the engine, overload gets fast 429s, a NaN fails its own request only, client errors are
4xx, and the drain keeps to one budget."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rewardserve._proto.rewardserve.v1 import reward_pb2, reward_pb2_grpc
from rewardserve.config import Settings
from rewardserve.errors import OutOfMemory
from rewardserve.testing.gated import GatedModel, gated, gated_loader
from rewardserve.testing.server_thread import ServerThread

pytestmark = pytest.mark.timeout(180)


def _settings(model: Path, **kw: object) -> Settings:
    return Settings(model=model, port=0, grpc_port=0, max_input_tokens=128, **kw)  # type: ignore[arg-type]


@pytest.fixture
def make_server(tiny_llama: Path) -> Iterator[list[ServerThread]]:
    started: list[ServerThread] = []
    yield started
    for srv in started:
        if srv._server is not None:
            srv.stop()


def _serve(started: list[ServerThread], model: Path, **kw: object) -> tuple[ServerThread, GatedModel]:
    srv = ServerThread(_settings(model, **kw), load_model=gated_loader).start()
    started.append(srv)
    engine = srv.scoring.engine
    assert isinstance(engine, GatedModel)
    return srv, engine


def _grpc_health(srv: ServerThread) -> int:
    with grpc.insecure_channel(srv.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def _wait_for(condition: object, what: str, timeout: float) -> float:
    """Poll ``condition`` (a callable) until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - t0


BODY = {"inputs": [{"prompt": "2+2?", "response": "4"}]}


def test_hung_forward_turns_health_not_serving(make_server: list[ServerThread], tiny_llama: Path) -> None:
    # The model hangs for 60 s (the gate's own limit); the watchdog limit is 1 s.
    srv, model = _serve(make_server, tiny_llama, watchdog_timeout_s=1.0)
    assert httpx.get(f"{srv.http_url}/health/ready").status_code == 200
    assert _grpc_health(srv) == health_pb2.HealthCheckResponse.SERVING
    with gated(model) as gate, httpx.Client(timeout=90) as c:
        call = threading.Thread(target=c.post, args=(f"{srv.http_url}/v1/score",), kwargs={"json": BODY})
        call.start()
        assert gate.entered.wait(30)
        t0 = time.monotonic()

        def not_ready() -> bool:
            return c.get(f"{srv.http_url}/health/ready").status_code == 503

        _wait_for(not_ready, "/health/ready 503", 10)
        _wait_for(lambda: _grpc_health(srv) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING", 10)
        assert time.monotonic() - t0 < 10
        assert c.get(f"{srv.http_url}/health/ready").json() == {"status": "stalled"}
        assert c.get(f"{srv.http_url}/health/live").status_code == 200  # stuck, not dead
        gate.release.set()
        call.join(30)
    # The forward ended: ready again, on both doors.
    _wait_for(lambda: httpx.get(f"{srv.http_url}/health/ready").status_code == 200, "ready again", 10)
    _wait_for(lambda: _grpc_health(srv) == health_pb2.HealthCheckResponse.SERVING, "SERVING", 10)


class _LoopKiller(BaseException):
    """Not an Exception: the batcher loops do not catch it, as with a bug in them."""


def test_dead_batcher_loop_fails_liveness_and_exits_nonzero(
    make_server: list[ServerThread], tiny_llama: Path
) -> None:
    srv, model = _serve(make_server, tiny_llama)
    model.failure = _LoopKiller("injected fault")
    r = httpx.post(f"{srv.http_url}/v1/score", json=BODY, timeout=30)
    assert r.status_code == 503 and r.json()["type"] == "unavailable"
    code = srv.run(srv.server.wait(), timeout=30)  # the process would exit with this
    assert code == 1
    assert srv.server.runtime.fatal is not None and "batcher died" in srv.server.runtime.fatal
    srv.stop()


def test_nan_in_one_request_fails_only_that_request(
    make_server: list[ServerThread], tiny_llama: Path
) -> None:
    srv, model = _serve(make_server, tiny_llama)
    poisoned = "poisoned response"
    marker = model.inner.tokenizer(poisoned, add_special_tokens=False)["input_ids"]

    def has_marker(item: object) -> bool:
        ids = list(item.input_ids)  # type: ignore[attr-defined]
        return any(ids[i : i + len(marker)] == marker for i in range(len(ids) - len(marker) + 1))

    model.nan_if = has_marker

    def body(i: int) -> dict[str, object]:
        inputs = [{"prompt": f"q{i}", "response": f"answer {i} {j}"} for j in range(3)]
        if i == 3:
            inputs[1] = {"prompt": "q3", "response": poisoned}
        return {"inputs": inputs}

    async def http_round() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            return list(
                await asyncio.gather(*(c.post(f"{srv.http_url}/v1/score", json=body(i)) for i in range(8)))
            )

    with gated(model) as gate:  # hold the first batch so the 8 requests share batches
        pending = threading.Thread(target=lambda: results.extend(asyncio.run(http_round())))
        results: list[httpx.Response] = []
        pending.start()
        assert gate.entered.wait(30)
        time.sleep(0.5)  # not a wait for state: only lets the other requests queue behind the first
        gate.release.set()
        pending.join(60)
    assert len(results) == 8
    for i, r in enumerate(results):
        data = json.loads(r.text)  # always valid JSON
        if i == 3:
            assert r.status_code == 500, r.text
            assert data["type"] == "internal" and "non-finite reward for input 1" in data["error"]
        else:
            assert r.status_code == 200 and len(data["scores"]) == 3, r.text

    # gRPC: INTERNAL with the same message, the others OK.
    async def grpc_round() -> list[object]:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)

            async def one(i: int) -> object:
                inputs = [reward_pb2.Input(**x) for x in body(i)["inputs"]]  # type: ignore[attr-defined]
                try:
                    return await stub.Score(reward_pb2.ScoreRequest(inputs=inputs), timeout=60)
                except grpc.aio.AioRpcError as exc:
                    return exc

            return list(await asyncio.gather(*(one(i) for i in range(8))))

    replies = asyncio.run(grpc_round())
    for i, reply in enumerate(replies):
        if i == 3:
            assert isinstance(reply, grpc.aio.AioRpcError) and reply.code() == grpc.StatusCode.INTERNAL
            assert "non-finite reward for input 1" in (reply.details() or "")
        else:
            assert len(reply.scores) == 3  # type: ignore[attr-defined]
    text = httpx.get(f"{srv.http_url}/metrics").text
    assert re.search(r'^rewardserve_rejected_total\{reason="non_finite"\} 2\.0$', text, re.M), text


def test_overload_is_answered_with_fast_429s(make_server: list[ServerThread], tiny_llama: Path) -> None:
    # 2,000 concurrent calls, cap 100, a slow model: only 200 or 429, and nothing left in flight.
    srv, model = _serve(make_server, tiny_llama, max_queued_requests=100)
    model.delay = 0.2
    batcher = srv.scoring.batcher

    async def http_round() -> list[int]:
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as c:

            async def one() -> int:
                r = await c.post(f"{srv.http_url}/v1/score", json=BODY)
                if r.status_code == 429:
                    assert int(r.headers["Retry-After"]) >= 1 and r.json()["type"] == "overloaded"
                return r.status_code

            return list(await asyncio.gather(*(one() for _ in range(2000))))

    codes = asyncio.run(http_round())
    assert set(codes) <= {200, 429} and codes.count(200) >= 100 and codes.count(429) > 0, set(codes)
    assert (batcher.admitted, batcher.queued_requests, srv.scoring.in_flight) == (0, 0, 0)

    async def grpc_round() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            request = reward_pb2.ScoreRequest(inputs=[reward_pb2.Input(prompt="2+2?", response="4")])

            async def one() -> grpc.StatusCode:
                try:
                    await stub.Score(request, timeout=120)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            return list(await asyncio.gather(*(one() for _ in range(2000))))

    statuses = asyncio.run(grpc_round())
    ok, full = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
    assert set(statuses) <= {ok, full} and statuses.count(ok) >= 100 and statuses.count(full) > 0
    assert (batcher.admitted, batcher.queued_requests, srv.scoring.in_flight) == (0, 0, 0)


def test_client_errors_are_4xx(make_server: list[ServerThread], tiny_llama: Path, tmp_path: Path) -> None:
    # A chat template that rejects a role (as Llama-2's and Mistral's do with a "system" message).
    model_dir = tmp_path / "strict_template"
    shutil.copytree(tiny_llama, model_dir)
    template = (
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('Conversation roles must be user/assistant') }}{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    )
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config))
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    srv, model = _serve(make_server, model_dir, max_queued_tokens=200)
    url = f"{srv.http_url}/v1/score"

    messages = [{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "ok"}]
    r = httpx.post(url, json={"inputs": [{"messages": messages}]})
    assert r.status_code == 422 and "chat template rejected" in r.json()["error"], r.text

    # One call over max_queued_tokens can never be admitted: 422 naming the setting, not 429/500.
    r = httpx.post(url, json={"inputs": [{"prompt": "x", "response": "word " * 100}] * 8})
    assert r.status_code == 422 and "max_queued_tokens" in r.json()["error"], r.text

    # Out of memory on a single item: 422 naming the input, not 500.
    model.failure = OutOfMemory("CUDA out of memory (injected by the test)")
    r = httpx.post(url, json=BODY)
    assert r.status_code == 422 and "out of device memory" in r.json()["error"], r.text
