"""RewardClient / AsyncRewardClient against real servers (HTTP and gRPC, ports 0, tiny Llama RM).

Generate and rollout through the client are tested in test_generation.py, on that module's vLLM server
(an engine start costs ~20 s)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardserve.client import (
    AsyncRewardClient,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RetryEvent,
    RetryPolicy,
    RewardClient,
    Unavailable,
)
from rewardserve.config import Settings
from rewardserve.testing.gated import gated, gated_loader
from rewardserve.testing.ports import free_port
from rewardserve.testing.server_thread import ServerThread

# The same input scored in differently composed batches: the fused CPU forward's oneDNN kernels
# depend on the batch's row count, so the last bits of a reward (~2e-7 seen) can differ between calls.
BATCH_TOL = 1e-6

TRANSPORTS = ["http", "grpc"]

INPUTS: list[Any] = [
    ("What is 2+2?", "4"),
    "some raw text",
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    {"prompt": "Name a colour.", "response": "Blue."},
    {"text": "another raw text"},
]
WIRE = [
    {"prompt": "What is 2+2?", "response": "4"},
    {"text": "some raw text"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"prompt": "Name a colour.", "response": "Blue."},
    {"text": "another raw text"},
]


def _settings(model: Path, **kw: Any) -> Settings:
    return Settings(model=model, port=0, grpc_port=0, max_input_tokens=256, **kw)


@pytest.fixture(scope="module")
def srv(tiny_llama: Path) -> Iterator[ServerThread]:
    """One shared server; it refuses more than 8 inputs per request, so chunking is exercised."""
    with ServerThread(_settings(tiny_llama, max_inputs_per_request=8)) as s:
        yield s


def _url(srv: ServerThread, transport: str) -> str:
    return srv.http_url if transport == "http" else f"grpc://{srv.grpc_target}"


def _v1_score(srv: ServerThread, inputs: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{srv.http_url}/v1/score", json={"inputs": inputs, **body}, timeout=60)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sync_score_compare_models_match_the_http_api(srv: ServerThread, transport: str) -> None:
    expected = _v1_score(srv, WIRE)
    with RewardClient(_url(srv, transport)) as rm:
        assert rm.score(INPUTS) == pytest.approx(expected["scores"], abs=BATCH_TOL)
        details = rm.score_details(INPUTS)
        assert details.model == "default"
        assert [d.tokens for d in details.details] == [d["tokens"] for d in expected["details"]]
        assert details.prompt_tokens == expected["usage"]["prompt_tokens"]
        assert rm.score([]) == []

        pairs = [("What is 2+2?", "4", "5"), {"prompt": "hi", "a": "hello", "b": "go away"}]
        result = rm.compare(pairs)
        r = _v1_score(
            srv,
            [
                {"prompt": p, "response": x}
                for p, a, b in [pairs[0], ("hi", "hello", "go away")]
                for x in (a, b)
            ],
        )
        rewards = r["scores"]
        margins = [rewards[0] - rewards[1], rewards[2] - rewards[3]]
        assert result.margins == pytest.approx(margins, abs=1e-6)
        assert result.probabilities == pytest.approx([1 / (1 + math.exp(-m)) for m in margins], abs=1e-6)

        (card,) = rm.models()
        assert card.id == "default" and card.kind == "reward" and card.max_tokens == 256
        assert card.device == "cpu" and card.chat_template


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_async_client_gives_the_same_numbers(srv: ServerThread, transport: str) -> None:
    expected = _v1_score(srv, WIRE)["scores"]
    async with AsyncRewardClient(_url(srv, transport)) as rm:
        assert await rm.score(INPUTS) == pytest.approx(expected, abs=BATCH_TOL)
        # Many calls at once over the one pool of connections, each getting its own answer.
        singles = [await rm.score([x]) for x in INPUTS]
        together = await asyncio.gather(*(rm.score([x]) for x in INPUTS * 4))
        assert [s[0] for s in together] == pytest.approx([s[0] for s in singles] * 4, abs=BATCH_TOL)
        (card,) = await rm.models()
        assert card.id == "default"
        result = await rm.compare([("q", "a", "b")])
        assert len(result.probabilities) == 1 and 0 < result.probabilities[0] < 1


def _record_calls(srv: ServerThread) -> tuple[list[int], Any]:
    """Wrap the server's ScoringService.score to record how many inputs each call carried."""
    scoring = srv.scoring
    sizes: list[int] = []
    original = scoring.score

    async def counting(inputs: Any, **kw: Any) -> Any:
        sizes.append(len(inputs))
        return await original(inputs, **kw)

    scoring.score = counting  # type: ignore[method-assign]

    def restore() -> None:
        scoring.score = original  # type: ignore[method-assign]

    return sizes, restore


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_large_inputs_are_chunked_and_reassembled_in_order(srv: ServerThread, transport: str) -> None:
    texts = [f"input number {i} " + "word " * (i % 11) for i in range(37)]
    one_by_one = [_v1_score(srv, [{"text": t}])["scores"][0] for t in texts]

    # Unchunked, the server refuses it (its own limit).
    with (
        RewardClient(_url(srv, transport), max_inputs_per_request=64) as rm,
        pytest.raises(InvalidRequest, match="limit is 8"),
    ):
        rm.score(texts)

    sizes, restore = _record_calls(srv)
    try:
        with RewardClient(_url(srv, transport), max_inputs_per_request=5, max_concurrency=4) as rm:
            assert rm.score(texts) == pytest.approx(one_by_one, abs=1e-6)
    finally:
        restore()
    assert sorted(sizes) == sorted([5] * 7 + [2])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_async_chunks_and_error_indices_count_from_the_whole_list(
    srv: ServerThread, transport: str
) -> None:
    texts = [f"item {i}" for i in range(23)]
    one_by_one = [_v1_score(srv, [{"text": t}])["scores"][0] for t in texts]
    async with AsyncRewardClient(_url(srv, transport), max_inputs_per_request=4) as rm:
        assert await rm.score(texts) == pytest.approx(one_by_one, abs=1e-6)
        too_long = [*texts[:21], ("story", "word " * 600), "last"]
        with pytest.raises(InvalidRequest, match=r"inputs\[21\]"):
            await rm.score(too_long)
        truncated = await rm.score_details(too_long, truncate=True)
        assert truncated.details[21].truncated and truncated.details[21].tokens == 256


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_user_errors_are_typed_and_never_retried(srv: ServerThread, transport: str) -> None:
    retries: list[RetryEvent] = []
    with RewardClient(_url(srv, transport), on_retry=retries.append) as rm:
        with pytest.raises(ModelNotFound, match="nope"):
            rm.score(["x"], model="nope")
        with pytest.raises(InvalidRequest, match="truncate"):
            rm.score([("p", "word " * 600)])
        with pytest.raises(TypeError, match="exactly one of"):
            rm.score([{"prompt": "p"}])
        with pytest.raises(TypeError, match="list of inputs"):
            rm.score("just a string")  # type: ignore[arg-type]
    assert retries == []


def test_bad_urls_are_refused_with_a_hint() -> None:
    for bad in ("localhost:8000", "ftp://x:1", "grpc://host:1/path", []):
        with pytest.raises(ValueError, match="URL"):
            RewardClient(bad)


def test_unreachable_server_is_retried_with_backoff_then_raises() -> None:
    retries: list[RetryEvent] = []
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)
    for url in (f"http://127.0.0.1:{free_port()}", f"grpc://127.0.0.1:{free_port()}"):
        retries.clear()
        with RewardClient(url, retry=policy, on_retry=retries.append) as rm, pytest.raises(Unavailable):
            rm.score(["x"])
        assert [e.attempt for e in retries] == [1, 2]
        assert all(isinstance(e.error, Unavailable) and 0 < e.delay_s <= 0.05 for e in retries)
        assert not rm.endpoints[0].healthy


def test_round_robin_then_failover_when_a_server_dies(tiny_llama: Path) -> None:
    a = ServerThread(_settings(tiny_llama)).start()
    try:
        with ServerThread(_settings(tiny_llama)) as b:
            texts = [f"text {i}" for i in range(12)]
            expected = _v1_score(b, [{"text": t} for t in texts])["scores"]
            retries: list[RetryEvent] = []
            a_urls = [_url(a, "http"), _url(a, "grpc")]
            clients = [
                RewardClient([_url(a, t), _url(b, t)], cooloff_s=300, on_retry=retries.append)
                for t in TRANSPORTS
            ]
            try:
                seen_a, restore_a = _record_calls(a)
                seen_b, restore_b = _record_calls(b)
                for rm in clients:
                    assert [rm.score([t])[0] for t in texts] == pytest.approx(expected, abs=1e-6)
                restore_a()
                restore_b()
                # Round-robin: each server took half of the single-input calls of both clients.
                assert len(seen_a) == len(seen_b) == len(texts)

                a.stop()
                for rm in clients:
                    assert [rm.score([t])[0] for t in texts] == pytest.approx(expected, abs=1e-6)
                    down, up = rm.endpoints
                    assert not down.healthy and down.down_for_s > 200 and up.healthy
                # One failed try per client: after it, the dead server is out of rotation.
                assert len(retries) == 2
                assert all(isinstance(e.error, Unavailable) and e.delay_s == 0 for e in retries)
                assert {e.endpoint for e in retries} == set(a_urls)
            finally:
                for rm in clients:
                    rm.close()
    finally:
        a.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_overload_is_retried_after_retry_after(tiny_llama: Path, transport: str) -> None:
    with ServerThread(_settings(tiny_llama, max_queued_requests=1), load_model=gated_loader) as s:
        refused = threading.Event()
        events: list[RetryEvent] = []

        def on_retry(e: RetryEvent) -> None:
            events.append(e)
            refused.set()
            gate.release.set()  # the server can go on once the client has been refused and is waiting

        with gated(s.scoring.engine) as gate:
            holder = threading.Thread(target=lambda: _v1_score(s, [{"text": "first"}]))
            holder.start()
            assert gate.entered.wait(30)
            with RewardClient(_url(s, transport), on_retry=on_retry) as rm:
                (reward,) = rm.score(["second"])
            holder.join(30)
        assert refused.is_set() and len(events) == 1
        (event,) = events
        assert isinstance(event.error, Overloaded) and event.error.status in (429, "RESOURCE_EXHAUSTED")
        assert event.error.retry_after_s is not None and event.error.retry_after_s >= 1
        assert event.delay_s >= event.error.retry_after_s  # it waited at least Retry-After
        assert reward == pytest.approx(_v1_score(s, [{"text": "second"}])["scores"][0], abs=1e-6)


# The client in a process where torch, transformers, fastapi and pydantic cannot be imported: what a
# trainer's environment with only `rewardserve[client]` looks like.
_NO_TORCH = r"""
import importlib.abc, json, sys

BLOCKED = {"torch", "transformers", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings",
           "numpy", "tokenizers", "safetensors", "vllm"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
from rewardserve.client import RewardClient, AsyncRewardClient
from rewardserve.client.trl import reward_function
from rewardserve.client.verl import compute_score
import asyncio

out = {}
for url in sys.argv[1:]:
    with RewardClient(url) as rm:
        out[url] = rm.score([("What is 2+2?", "4"), "some raw text"])
    async def go(url=url):
        async with AsyncRewardClient(url) as rm:
            return await rm.score([("What is 2+2?", "4")])
    out[url + "#async"] = asyncio.run(go())
fn = reward_function(sys.argv[1])
out["trl"] = fn(prompts=["What is 2+2?"], completions=["4"])
out["verl"] = compute_score("ds", "4", "4", {"rewardserve_url": sys.argv[1], "prompt": "What is 2+2?"})
out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


def test_client_works_without_torch_transformers_fastapi(srv: ServerThread) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, srv.http_url, f"grpc://{srv.grpc_target}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = _v1_score(srv, [{"prompt": "What is 2+2?", "response": "4"}, {"text": "some raw text"}])[
        "scores"
    ]
    for url in (srv.http_url, f"grpc://{srv.grpc_target}"):
        assert out[url] == pytest.approx(expected, abs=BATCH_TOL)
        assert out[url + "#async"] == pytest.approx(expected[:1], abs=BATCH_TOL)
    assert out["trl"] == pytest.approx(expected[:1], abs=BATCH_TOL)
    assert out["verl"] == pytest.approx(expected[0], abs=BATCH_TOL)
    assert out["loaded"] == []


def test_generate_is_refused_clearly_without_a_generator(srv: ServerThread) -> None:
    for transport in TRANSPORTS:
        with (
            RewardClient(_url(srv, transport)) as rm,
            pytest.raises(ModelNotFound, match="no policy generator"),
        ):
            rm.generate(["hi"])
    with RewardClient(_url(srv, "grpc")) as rm, pytest.raises(TypeError, match="over gRPC"):
        rm.generate(["hi"], not_a_field=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_recovers_when_its_only_server_restarts(tiny_llama: Path, transport: str) -> None:
    """A rolling restart: the same address goes away and comes back; the client's pooled connection
    (HTTP keep-alive, gRPC channel) is dead, and the next call still succeeds."""
    retries: list[RetryEvent] = []
    first = ServerThread(_settings(tiny_llama)).start()
    ports = {"port": first.server.http_port, "grpc_port": first.server.grpc_port}
    url = _url(first, transport)
    with RewardClient(url, on_retry=retries.append) as rm:
        before = rm.score(["same text"])
        first.stop()
        with RewardClient(url, retry=RetryPolicy(max_attempts=1)) as gone, pytest.raises(Unavailable):
            gone.score(["x"])  # nothing listens there now
        with ServerThread(Settings(model=tiny_llama, max_input_tokens=256, **ports)) as second:
            assert _url(second, transport) == url
            assert rm.score(["same text"]) == pytest.approx(before, abs=BATCH_TOL)
            assert rm.endpoints[0].healthy
    assert all(isinstance(e.error, Unavailable) for e in retries)
