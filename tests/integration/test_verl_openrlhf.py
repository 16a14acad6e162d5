"""verl's custom reward functions and OpenRLHF's remote reward calls against a running rewardserve.

Both are called the way the trainers call them: verl loads the reward file by path and calls it with
keyword arguments (one sample, a batch, or awaited in its async reward loop); OpenRLHF's agent
executor posts one sample per request, many at once, with a new aiohttp session each, and with
several reward URLs it also posts empty shards.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

import rewardserve.client.verl as verl_module
from rewardserve.config import Settings
from rewardserve.testing.server_thread import ServerThread

# The same input scored in differently composed batches: the fused CPU forward's oneDNN kernels
# depend on the batch's row count, so the last bits of a reward (~2e-7 seen) can differ between calls.
BATCH_TOL = 1e-6

QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hi.", "Why is the sky blue?"]
ANSWERS = ["4", "Blue, like the sky.", "hi!", "Rayleigh scattering of sunlight."]


@pytest.fixture(scope="module")
def srv(tiny_llama: Path) -> Iterator[ServerThread]:
    with ServerThread(Settings(model=tiny_llama, port=0, grpc_port=0, max_input_tokens=256)) as s:
        yield s


def _v1_score(srv: ServerThread, inputs: list[dict[str, Any]]) -> list[float]:
    r = httpx.post(f"{srv.http_url}/v1/score", json={"inputs": inputs, "truncate": True}, timeout=60)
    assert r.status_code == 200, r.text
    scores: list[float] = r.json()["scores"]
    return scores


# --- verl ------------------------------------------------------------------------------------------


def _call_with_kwargs(raw_fn: Callable[..., Any], extra: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    return raw_fn(*args, **{**kwargs, **extra})


async def _call_with_kwargs_async(
    raw_fn: Callable[..., Any], extra: dict[str, Any], *args: Any, **kwargs: Any
) -> Any:
    return await raw_fn(*args, **{**kwargs, **extra})


_loaded: list[Any] = []  # modules loaded by path, whose clients are closed at the end


@pytest.fixture(scope="module", autouse=True)
def _close_loaded_clients() -> Iterator[None]:
    yield
    for module in _loaded:
        module.close()
    verl_module.close()


def _load_like_verl(name: str) -> Any:
    """verl's get_custom_reward_fn: import the file by path as "custom_module", then wrap the named
    function in a partial that merges ``reward_kwargs`` (async functions in an async wrapper)."""
    path = verl_module.__file__
    assert path is not None
    spec = importlib.util.spec_from_file_location("custom_module", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("custom_module")
    sys.modules["custom_module"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("custom_module", None)
        else:
            sys.modules["custom_module"] = saved
    _loaded.append(module)
    raw_fn = getattr(module, name)
    if inspect.iscoroutinefunction(raw_fn):
        return partial(_call_with_kwargs_async, raw_fn, {})
    return partial(_call_with_kwargs, raw_fn, {})


def test_verl_compute_score_equals_v1_score(srv: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(verl_module.URL_ENV, srv.http_url)
    compute_score = _load_like_verl("compute_score")
    assert not inspect.iscoroutinefunction(compute_score)
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    cases: list[tuple[Any, dict[str, Any]]] = [
        ({"question": QUESTIONS[0], "split": "train", "index": 0}, {"prompt": QUESTIONS[0], "response": "4"}),
        ({"prompt": chat}, {"messages": [*chat, {"role": "assistant", "content": "4"}]}),
        ({"rewardserve_prompt": "P", "question": "ignored"}, {"prompt": "P", "response": "4"}),
        (None, {"text": "4"}),
        ({"index": 3}, {"text": "4"}),
    ]
    expected = _v1_score(srv, [wire for _, wire in cases])
    got = [
        compute_score(data_source="gsm8k", solution_str="4", ground_truth="4", extra_info=info)
        for info, _ in cases
    ]
    assert got == pytest.approx(expected, abs=BATCH_TOL)
    assert all(isinstance(x, float) for x in got)
    # The reward loop passes extra keyword arguments; they are accepted and ignored.
    again = compute_score(
        data_source="x", solution_str="4", ground_truth=None, extra_info=None, reward_router_address=None
    )
    assert again == pytest.approx(expected[3], abs=BATCH_TOL)


def test_verl_url_from_extra_info_wins_and_a_missing_url_says_how_to_fix(
    srv: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(verl_module.URL_ENV, "http://127.0.0.1:9")  # discard port: would fail if used
    info = {"rewardserve_url": f"grpc://{srv.grpc_target}", "prompt": QUESTIONS[1]}
    got = verl_module.compute_score("ds", ANSWERS[1], None, info)
    assert got == pytest.approx(
        _v1_score(srv, [{"prompt": QUESTIONS[1], "response": ANSWERS[1]}])[0], abs=BATCH_TOL
    )
    monkeypatch.delenv(verl_module.URL_ENV)
    with pytest.raises(ValueError, match=verl_module.URL_ENV):
        verl_module.compute_score("ds", "x", None, {"prompt": "p"})


def test_verl_batched_and_async_forms_equal_v1_score(
    srv: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(verl_module.URL_ENV, srv.http_url)
    n = 40
    solutions = [ANSWERS[i % 4] + " " * (i % 3) + str(i) for i in range(n)]
    infos: list[Any] = [{"question": QUESTIONS[i % 4]} if i % 5 else None for i in range(n)]
    # A few samples name another server (the gRPC door of the same one): grouped per server.
    for i in range(0, n, 7):
        infos[i] = {"question": QUESTIONS[i % 4], "rewardserve_url": f"grpc://{srv.grpc_target}"}
    expected = _v1_score(
        srv,
        [
            {"prompt": info["question"], "response": s} if info else {"text": s}
            for s, info in zip(solutions, infos, strict=True)
        ],
    )
    kwargs = {"data_sources": ["ds"] * n, "solution_strs": solutions, "ground_truths": [None] * n}

    batch = _load_like_verl("compute_score_batch")
    assert batch(**kwargs, extra_infos=infos) == pytest.approx(expected, abs=BATCH_TOL)

    batch_async = _load_like_verl("compute_score_batch_async")
    one_async = _load_like_verl("compute_score_async")
    assert inspect.iscoroutinefunction(batch_async) and inspect.iscoroutinefunction(one_async)

    async def run() -> tuple[list[float], list[float]]:
        batched = await batch_async(**kwargs, extra_infos=infos)
        # verl's reward loop: one awaited call per sample, all in flight together.
        singles = await asyncio.gather(
            *(
                one_async(data_source="ds", solution_str=s, ground_truth=None, extra_info=info)
                for s, info in zip(solutions, infos, strict=True)
            )
        )
        for module in _loaded:
            await module.aclose()  # its asyncio clients belong to this loop, which ends here
        return batched, list(singles)

    batched, singles = asyncio.run(run())
    assert batched == pytest.approx(expected, abs=BATCH_TOL)
    assert singles == pytest.approx(expected, abs=BATCH_TOL)


# --- OpenRLHF --------------------------------------------------------------------------------------


async def _openrlhf_fetch_rewards_via_http(
    reward_endpoints: list[str], queries: list[str], prompts: list[str], labels: list[Any]
) -> list[dict[str, Any]]:
    """OpenRLHF's SingleTurnAgentExecutor._fetch_rewards_via_http, as it does it: shard the samples
    over the endpoints (so a 1-sample call to 2 endpoints posts an empty shard to the second), a new
    aiohttp session per try, 180 s total timeout, raise_for_status, 5 tries 1 s apart."""
    num_servers = len(reward_endpoints)
    batch_size = (len(queries) + num_servers - 1) // num_servers
    timeout = aiohttp.ClientTimeout(total=180)

    async def post(url: str, data: dict[str, Any], try_max_times: int = 5) -> dict[str, Any]:
        for _ in range(try_max_times):
            try:
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.post(url, json=data) as response,
                ):
                    response.raise_for_status()
                    body: dict[str, Any] = await response.json()
                    return body
            except aiohttp.ClientError:
                await asyncio.sleep(1)
        raise RuntimeError("request failed 5 times")

    tasks = []
    for i, rm in enumerate(reward_endpoints):
        start, end = i * batch_size, min((i + 1) * batch_size, len(queries))
        payload = {"query": queries[start:end], "prompts": prompts[start:end], "labels": labels[start:end]}
        tasks.append(asyncio.create_task(post(rm, payload)))
    return list(await asyncio.gather(*tasks))


def test_openrlhf_200_concurrent_single_sample_requests(srv: ServerThread, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    url = f"{srv.http_url}/get_reward"
    samples = []
    for i in range(200):
        chat = [{"role": "user", "content": f"{QUESTIONS[i % 4]} (#{i})"}]
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        # The query OpenRLHF sends: prompt + response tokens decoded with special tokens kept.
        query = prompt + ANSWERS[i % 4] + " " * (i % 5) + tokenizer.eos_token
        label = None if i % 3 else str(i)
        samples.append((prompt, query, label))
    expected = _v1_score(srv, [{"text": q} for _, q, _ in samples])

    async def run() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(
            *(
                # Every other sample goes out as if two reward URLs were given: one real shard plus
                # an empty one ({"query": [], "prompts": [], "labels": []}).
                _openrlhf_fetch_rewards_via_http([url] if i % 2 else [url, url], [q], [p], [label])
                for i, (p, q, label) in enumerate(samples)
            )
        )

    answers = asyncio.run(run())
    rewards = []
    for i, shards in enumerate(answers):
        assert len(shards) == (1 if i % 2 else 2)
        if i % 2 == 0:
            assert shards[1] == {"rewards": [], "scores": [], "extra_logs": {"reward_tokens": [], "mask": []}}
        info = shards[0]  # what OpenRLHF reads: rewards_info_list[0]
        assert set(info) == {"rewards", "scores", "extra_logs"}
        assert info["scores"] == info["rewards"] and isinstance(info["extra_logs"], dict)
        (reward,) = info["rewards"]
        rewards.append(reward)
    assert rewards == pytest.approx(expected, abs=1e-6)
