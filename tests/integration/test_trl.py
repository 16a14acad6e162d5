"""A real trl.GRPOTrainer (CPU, tiny random policy) trained with rewards from a running rewardserve.

The trainer is synchronous, so the server runs in its own thread and event loop. What the trainer
logged as its reward must be what the server gives for the completions the reward function saw.
"""

from __future__ import annotations

import asyncio
import statistics
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


def _train(policy: Path, out: Path, dataset: list[Any], reward_funcs: list[Any]) -> list[dict[str, float]]:
    """Run GRPOTrainer for STEPS steps; returns the logs it emitted."""
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
        train_dataset=Dataset.from_dict({"prompt": dataset}),
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
