"""A real trl.GRPOTrainer (CPU, tiny random policy) trained with rewards from a running rewardserve.

The trainer is synchronous, so the server runs in its own thread and event loop. What the trainer
logged as its reward must be what the server gives for the completions the reward function saw.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardserve.client.trl import AsyncRewardFunction, RewardFunction, reward_function
from rewardserve.config import Settings
from rewardserve.testing.server_thread import ServerThread

pytestmark = pytest.mark.slow

STEPS = 2
PROMPTS = ["The quick brown fox", "Question: what is two plus two?", "Tell me a story", "Hello"]
CHATS = [[{"role": "user", "content": p}] for p in PROMPTS]


@pytest.fixture(scope="module")
def srv(tiny_llama: Path) -> Iterator[ServerThread]:
    with ServerThread(Settings(model=tiny_llama, port=0, grpc_port=0, max_input_tokens=256)) as s:
        yield s


class RecordingSync(RewardFunction):
    """The real reward function, also remembering what it was given and what it answered."""

    calls: list[tuple[list[Any], list[Any], list[float]]]

    def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> list[float]:
        rewards = super().__call__(prompts, completions, **kwargs)
        self.calls.append((list(prompts), list(completions), rewards))
        return rewards


class RecordingAsync(AsyncRewardFunction):
    calls: list[tuple[list[Any], list[Any], list[float]]]

    async def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> list[float]:
        rewards = await super().__call__(prompts, completions, **kwargs)
        self.calls.append((list(prompts), list(completions), rewards))
        return rewards


def _recording(url: str, name: str, *, asynchronous: bool = False) -> Any:
    """What ``reward_function(url, name=name, asynchronous=...)`` builds, plus a record of its calls."""
    template = reward_function(url, name=name, asynchronous=asynchronous)  # type: ignore[call-overload]
    fn = (RecordingAsync if asynchronous else RecordingSync)(
        url, model=None, truncate=True, as_text=False, name=name, client_options={}
    )
    assert type(fn).__mro__[1] is type(template) and vars(fn) == vars(template)
    fn.calls = []
    return fn


def _train(
    policy: Path,
    out: Path,
    dataset: list[Any],
    reward_funcs: list[Any],
    columns: dict[str, list[Any]] | None = None,
) -> list[dict[str, float]]:
    """Run GRPOTrainer for STEPS steps (``columns``: more dataset columns); returns its logs."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    logs: list[dict[str, float]] = []

    class Keep(TrainerCallback):  # type: ignore[misc]
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
        ) -> None:
            if logs is not None:
                keep.append(dict(logs))

    keep = logs
    config = GRPOConfig(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        push_to_hub=False,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=str(policy),
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": dataset, **(columns or {})}),
        callbacks=[Keep()],
    )
    trainer.train()
    for fn in reward_funcs:  # release the connections (async ones on TRL's loop, which owns them)
        if isinstance(fn, AsyncRewardFunction):
            asyncio.run_coroutine_threadsafe(fn.aclose(), trainer.async_loop).result(30)
        else:
            fn.close()
    return [entry for entry in logs if any(k.startswith("rewards/") for k in entry)]


def _rescore(srv: ServerThread, prompts: list[Any], completions: list[Any]) -> list[float]:
    """What /v1/score says about the completions a reward function received (built independently
    of the adapter: pair for text, conversation for chats)."""
    inputs = [
        {"prompt": p, "response": c} if isinstance(p, str) else {"messages": [*p, *c]}
        for p, c in zip(prompts, completions, strict=True)
    ]
    r = httpx.post(f"{srv.http_url}/v1/score", json={"inputs": inputs, "truncate": True}, timeout=60)
    assert r.status_code == 200, r.text
    scores: list[float] = r.json()["scores"]
    return scores


def _check(srv: ServerThread, fn: Any, logs: list[dict[str, float]]) -> None:
    name = fn.__name__
    assert len(fn.calls) == STEPS, f"{name} was called {len(fn.calls)} times"
    logged = [entry[f"rewards/{name}/mean"] for entry in logs]
    assert len(logged) == STEPS
    for (prompts, completions, rewards), mean in zip(fn.calls, logged, strict=True):
        assert len(rewards) == len(completions) == 4
        expected = _rescore(srv, prompts, completions)
        assert rewards == pytest.approx(expected, abs=1e-6)
        # TRL averages the float32 rewards it got: the mean it logged is the server's mean.
        assert mean == pytest.approx(statistics.fmean(expected), abs=1e-5)


def test_grpo_trains_on_plain_prompts_with_rewardserve_rewards(
    srv: ServerThread, tiny_policy: Path, tmp_path: Path
) -> None:
    fn = _recording(srv.http_url, "rewardserve")
    logs = _train(tiny_policy, tmp_path, PROMPTS, [fn])
    _check(srv, fn, logs)
    assert all(isinstance(c, str) for _, completions, _ in fn.calls for c in completions)


def test_grpo_trains_on_conversations_with_sync_and_async_reward_functions(
    srv: ServerThread, tiny_policy: Path, tmp_path: Path
) -> None:
    sync_fn = _recording(f"grpc://{srv.grpc_target}", "rm_grpc")
    async_fn = _recording(srv.http_url, "rm_async", asynchronous=True)
    logs = _train(tiny_policy, tmp_path, CHATS, [sync_fn, async_fn])
    for fn in (sync_fn, async_fn):
        _check(srv, fn, logs)
        for prompts, completions, _ in fn.calls:
            assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
            assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions)
    # Both saw the same completions (TRL calls every reward function on one batch) and agree.
    for (_, seen_sync, rewards_sync), (_, seen_async, rewards_async) in zip(
        sync_fn.calls, async_fn.calls, strict=True
    ):
        assert seen_sync == seen_async
        assert rewards_sync == pytest.approx(rewards_async, abs=1e-9)


MATH_PROMPTS = ["What is 2+2?", "What is 3*3?", "What is 10-4?", "What is 1/2+1/2?"]
ANSWERS = ["4", "9", "6", "1"]


class RecordingLabels(RewardFunction):
    """The real reward function, also remembering the label column TRL passed."""

    calls: list[tuple[list[Any], list[Any], list[Any], list[float | None]]]

    def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> list[float | None]:
        rewards = super().__call__(prompts, completions, **kwargs)
        self.calls.append((list(prompts), list(completions), list(kwargs["answer"]), rewards))
        return rewards


def test_grpo_trains_on_a_composite_of_the_math_verifier_and_a_reward_model(
    tiny_llama: Path, tiny_policy: Path, tmp_path: Path
) -> None:
    config = tmp_path / "rewards.yaml"
    config.write_text(
        f"models:\n  - {{name: rm, path: {tiny_llama}, max_input_tokens: 256}}\n"
        "functions:\n  - {name: math, workers: 1}\n"
        "composites:\n  - {name: math_rm, weights: {math: 1.0, rm: 0.1}}\n"
    )
    with ServerThread(Settings(config=config, port=0, grpc_port=0), preload=False) as srv:
        for _ in range(1500):  # the registry loads in the background
            if httpx.get(f"{srv.http_url}/health/ready").status_code == 200:
                break
            assert srv.server.runtime.load_error is None, srv.server.runtime.load_error
            time.sleep(0.2)
        template = reward_function(srv.http_url, model="math_rm", name="math_rm", label_column="answer")
        fn = RecordingLabels(
            srv.http_url,
            model="math_rm",
            truncate=True,
            as_text=False,
            name="math_rm",
            client_options={},
            label_column="answer",
        )
        assert vars(fn) == vars(template)
        fn.calls = []
        logs = _train(tiny_policy, tmp_path / "out", MATH_PROMPTS, [fn], columns={"answer": ANSWERS})
        assert len(fn.calls) == STEPS and len(logs) == STEPS
        for prompts, completions, answers, rewards in fn.calls:
            assert [ANSWERS[MATH_PROMPTS.index(p)] for p in prompts] == answers  # the label column
            inputs = [
                {"prompt": p, "response": c, "label": a}
                for p, c, a in zip(prompts, completions, answers, strict=True)
            ]
            r = httpx.post(
                f"{srv.http_url}/v1/score",
                json={"model": "math_rm", "inputs": inputs, "truncate": True},
                timeout=60,
            ).json()
            assert rewards == pytest.approx(r["scores"], abs=1e-6)
            for d in r["details"]:  # both components answered each sample
                assert set(d["components"]) == {"math", "rm"} and d["components"]["math"] in (0.0, 1.0)
        for entry in logs:
            assert math.isfinite(entry["rewards/math_rm/mean"])
