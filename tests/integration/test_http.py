"""The HTTP API on a real uvicorn server (port 0) over a real tiny reward model."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardserve.app import RewardServer, load_engine, load_scoring
from rewardserve.config import Settings
from rewardserve.metrics import Metrics
from rewardserve.scoring.service import ScoringModel
from rewardserve.scoring.types import Message, ScoreInput
from rewardserve.testing.gated import GatedModel, gated, gated_loader

pytestmark = pytest.mark.asyncio


async def _start(settings: Settings) -> RewardServer:
    metrics = Metrics()
    scoring = await load_scoring(settings, metrics, gated_loader)
    server = RewardServer(settings, metrics=metrics, scoring=scoring)
    await server.start()
    return server


@pytest.fixture
async def server(tiny_llama: Path) -> AsyncIterator[RewardServer]:
    srv = await _start(Settings(model=tiny_llama, port=0, max_input_tokens=256))
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: RewardServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c:
        yield c


def _direct(server: RewardServer, inputs: list[ScoreInput]) -> list[float]:
    engine = server.runtime.require_scoring().engine
    enc = [engine.encode(x, truncate=False) for x in inputs]
    return [o.score for o in engine.run(engine.prepare(enc))]


async def test_score_contract(server: RewardServer, client: httpx.AsyncClient) -> None:
    body = {
        "model": "default",
        "inputs": [
            {"prompt": "2+2?", "response": "4"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"text": "some raw text"},
        ],
        "truncate": False,
    }
    r = await client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    expected = _direct(
        server,
        [
            ScoreInput(prompt="2+2?", response="4"),
            ScoreInput(messages=(Message("user", "hi"), Message("assistant", "hello"))),
            ScoreInput(text="some raw text"),
        ],
    )
    assert data["model"] == "default"
    assert data["scores"] == pytest.approx(expected, abs=1e-6)
    assert len(set(data["scores"])) == 3
    assert [d["truncated"] for d in data["details"]] == [False] * 3
    assert data["usage"]["prompt_tokens"] == sum(d["tokens"] for d in data["details"]) > 0


async def test_empty_inputs_and_model_errors(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/score", json={"inputs": []})
    assert r.status_code == 200 and r.json()["scores"] == []
    r = await client.post("/v1/score", json={"model": "other", "inputs": [{"text": "x"}]})
    assert r.status_code == 404 and r.json()["type"] == "not_found"


@pytest.mark.parametrize(
    "bad",
    [
        {"inputs": [{"prompt": "only a prompt"}]},
        {"inputs": [{"text": "a", "prompt": "b", "response": "c"}]},
        {"inputs": [{"messages": []}]},
        {"inputs": [{}]},
        {"inputs": "not a list"},
        {"inputs": [{"text": "x"}], "unknown": 1},
    ],
)
async def test_validation_errors_are_clean(client: httpx.AsyncClient, bad: dict[str, Any]) -> None:
    r = await client.post("/v1/score", json=bad)
    assert r.status_code == 422
    body = r.json()
    assert set(body) == {"error", "type"} and body["type"] == "validation"
    assert "Traceback" not in body["error"] and "/" not in body["error"].replace("/v1", "")


async def test_invalid_json_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["type"] == "validation"


async def test_too_long_and_truncate(client: httpx.AsyncClient) -> None:
    long = {"prompt": "story", "response": " ".join(["word"] * 600)}
    r = await client.post("/v1/score", json={"inputs": [{"text": "ok"}, long]})
    assert r.status_code == 422 and "inputs[1]" in r.json()["error"] and "truncate" in r.json()["error"]
    r = await client.post("/v1/score", json={"inputs": [long], "truncate": True})
    assert r.status_code == 200
    assert r.json()["details"][0] == {
        "tokens": 256,
        "truncated": True,
        "objectives": None,
        "status": "ok",
        "mask": False,
    }


async def test_get_reward_openrlhf(server: RewardServer, client: httpx.AsyncClient) -> None:
    queries = ["<|bos|><|user|>hi<|eos|><|assistant|>hello<|eos|>", "plain text query"]
    r = await client.post("/get_reward", json={"query": queries, "prompts": ["hi", "x"], "labels": [1, 0]})
    assert r.status_code == 200, r.text
    data = r.json()
    expected = _direct(server, [ScoreInput(text=q) for q in queries])
    assert data["rewards"] == pytest.approx(expected, abs=1e-6)
    assert data["scores"] == data["rewards"]
    assert isinstance(data["extra_logs"], dict)
    r = await client.post("/get_reward", json={"query": [], "prompts": [], "labels": []})
    assert r.status_code == 200 and r.json()["rewards"] == []


async def test_models_and_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health/ready")).json() == {"status": "ready"}
    card = (await client.get("/v1/models")).json()["data"][0]
    assert card["id"] == "default" and card["max_input_tokens"] == 256
    assert card["dtype"] == "float32" and card["device"] == "cpu" and card["head"] == "scalar"


async def test_accepted_connections_have_tcp_nodelay(server: RewardServer, client: httpx.AsyncClient) -> None:
    """A response goes out as two writes (head, then body); with Nagle on, the body waited for the
    client's delayed ACK, ~40 ms on every keep-alive request. asyncio sets TCP_NODELAY on accepted
    connections only when the listening socket's proto is IPPROTO_TCP (app._bind)."""
    assert (await client.get("/health/live")).status_code == 200
    connections = list(server._http.server_state.connections)
    assert connections, "no open connection on the server"
    for protocol in connections:
        sock = protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_concurrent_single_requests_get_their_own_scores(
    server: RewardServer, client: httpx.AsyncClient
) -> None:
    texts = [f"request number {i} " + "word " * (i % 17) for i in range(64)]
    rs = await asyncio.gather(*(client.post("/v1/score", json={"inputs": [{"text": t}]}) for t in texts))
    got = [r.json()["scores"][0] for r in rs]
    assert got == pytest.approx(_direct(server, [ScoreInput(text=t) for t in texts]), abs=1e-6)


async def test_body_limit_413(tiny_llama: Path) -> None:
    srv = await _start(Settings(model=tiny_llama, port=0, max_body_bytes=2048))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}") as c:
            r = await c.post("/v1/score", json={"inputs": [{"text": "x" * 5000}]})
            assert r.status_code == 413 and r.json()["type"] == "validation"

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
                yield b'{"inputs": [{"text": "'
                for _ in range(10):
                    yield b"y" * 500
                yield b'"}]}'

            r = await c.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413
            assert (await c.post("/v1/score", json={"inputs": [{"text": "small"}]})).status_code == 200
    finally:
        await srv.stop()


async def test_overload_429_with_retry_after(tiny_llama: Path) -> None:
    srv = await _start(Settings(model=tiny_llama, port=0, max_queued_requests=1))
    try:
        with gated(srv.runtime.require_scoring().engine) as gate:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=30) as c:
                first = asyncio.create_task(c.post("/v1/score", json={"inputs": [{"text": "first"}]}))
                assert await asyncio.to_thread(gate.entered.wait, 10)
                r = await c.post("/v1/score", json={"inputs": [{"text": "second"}]})
                assert r.status_code == 429 and r.json()["type"] == "overloaded"
                assert int(r.headers["retry-after"]) >= 1
                gate.release.set()
                assert (await first).status_code == 200
    finally:
        await srv.stop()


async def test_internal_errors_are_sanitized(server: RewardServer, client: httpx.AsyncClient) -> None:
    model = server.runtime.require_scoring().engine
    assert isinstance(model, GatedModel)
    model.failure = RuntimeError("boom at /secret/path/model.py line 3")
    try:
        r = await client.post("/v1/score", json={"inputs": [{"text": "x"}]})
    finally:
        model.failure = None
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; see the server log", "type": "internal"}


async def test_draining_refuses_new_work(server: RewardServer, client: httpx.AsyncClient) -> None:
    server.runtime.draining = True
    r = await client.post("/v1/score", json={"inputs": [{"text": "x"}]})
    assert r.status_code == 503 and r.json()["type"] == "unavailable"
    assert (await client.get("/health/ready")).status_code == 503
    assert (await client.get("/health/live")).status_code == 200
    server.runtime.draining = False


async def test_not_ready_while_loading(tiny_llama: Path) -> None:
    loaded = asyncio.Event()  # the model load waits for this, so "loading" is observed for sure

    async def held_load(settings: Settings) -> ScoringModel:
        await loaded.wait()
        return await load_engine(settings)

    # As `rewardserve serve` runs it: once loaded, the start-up heap is frozen out of the collector.
    srv = RewardServer(Settings(model=tiny_llama, port=0), load_model=held_load, freeze_heap=True)
    gc.unfreeze()
    await srv.start()  # begins loading in the background
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=30) as c:
            r = await c.get("/health/ready")
            assert r.status_code == 503 and r.json()["status"] == "loading"
            assert (await c.get("/health/live")).status_code == 200
            s = await c.post("/v1/score", json={"inputs": [{"text": "x"}]})
            assert s.status_code == 503 and s.json()["type"] == "unavailable"
            loaded.set()
            for _ in range(600):
                r = await c.get("/health/ready")
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 200
            assert gc.get_freeze_count() > 10_000  # torch and the model, at least
            assert (await c.post("/v1/score", json={"inputs": [{"text": "x"}]})).status_code == 200
    finally:
        await srv.stop()
        gc.unfreeze()  # the rest of the test session collects as usual
