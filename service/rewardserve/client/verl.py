"""verl custom reward functions backed by a rewardserve server.

Point verl at this file and pick a function (docs/integrations.md)::

    custom_reward_function.path=$(python -c 'import rewardserve.client.verl as m; print(m.__file__)')
    custom_reward_function.name=compute_score          # one sample per call (naive/prime managers)
    # or compute_score_async (verl's async reward loop awaits coroutine functions),
    # or compute_score_batch with reward_model.reward_manager=batch (one call per batch).

verl passes ``data_source, solution_str, ground_truth, extra_info``; ``solution_str`` is the decoded
response only. What is scored:

* ``{"prompt": P, "response": solution_str}`` when ``extra_info`` carries the prompt as text under
  ``"rewardserve_prompt"``, ``"prompt"`` or ``"question"`` (first found), or as a chat under the
  same keys (then the response is appended as the assistant turn);
* ``{"text": solution_str}`` otherwise.

Each input carries ``ground_truth`` as its ``label`` and ``{"data_source": ..., "extra_info": ...}``
as its ``metadata`` (numpy values made plain JSON): a reward model ignores them, a reward function
(``math``, your verifier) or a judge checks the response against them. verl needs a float for every
sample: one a reward source fails on (timeout, error) is 0.0 here, as on ``/get_reward``; score
through ``RewardClient.score_details`` to see status and mask.

Where the server is: ``extra_info["rewardserve_url"]`` (one URL or several), else the environment
variable ``REWARDSERVE_URL`` (comma-separated for several). The environment is read here, unlike in
the server (whose only reader is config.py): verl imports this module by path inside its own worker
processes and hands the function nothing but the sample, so the process environment (set for the
whole job, e.g. in Ray's ``runtime_env``) is the one channel for configuration that does not live in
the dataset. ``extra_info["rewardserve_model"]`` names the reward model (default: the server's). A server that
requires an API key gets the environment variable ``REWARDSERVE_API_KEY`` (never the dataset).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from rewardserve.client.aio import AsyncRewardClient
from rewardserve.client.sync import RewardClient
from rewardserve.client.types import Input, message_to_wire

__all__ = [
    "URL_ENV",
    "aclose",
    "close",
    "compute_score",
    "compute_score_async",
    "compute_score_batch",
    "compute_score_batch_async",
    "to_input",
]

URL_ENV = "REWARDSERVE_URL"
API_KEY_ENV = "REWARDSERVE_API_KEY"
_PROMPT_KEYS = ("rewardserve_prompt", "prompt", "question")

# One client per (server list) per process, shared by every call: verl calls compute_score once per
# sample, and a new client per call would open a new connection per sample.
_clients: dict[tuple[str, ...], RewardClient] = {}
# Per event loop too (an asyncio client's connections belong to one loop); weak, so a closed loop's
# clients go with it.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], AsyncRewardClient]]
_async_clients = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _urls(extra_info: Any) -> tuple[str, ...]:
    given = extra_info.get("rewardserve_url") if isinstance(extra_info, Mapping) else None
    if given is None:
        given = os.environ.get(URL_ENV, "")
    urls = [given] if isinstance(given, str) else list(given)
    urls = [u.strip() for item in urls for u in str(item).split(",") if u.strip()]
    if not urls:
        raise ValueError(
            f"no rewardserve URL: set the environment variable {URL_ENV}=http://HOST:8000 for the verl "
            'job, or put "rewardserve_url" in each sample\'s extra_info'
        )
    return tuple(urls)


def _model(extra_info: Any) -> str | None:
    model = extra_info.get("rewardserve_model") if isinstance(extra_info, Mapping) else None
    return str(model) if model else None


def to_input(solution_str: str, extra_info: Any, ground_truth: Any = None, data_source: Any = None) -> Input:
    """What is scored for one verl sample (see the module docstring)."""
    body: dict[str, Any] = {"text": solution_str}
    if isinstance(extra_info, Mapping):
        for key in _PROMPT_KEYS:
            prompt = extra_info.get(key)
            if isinstance(prompt, str):
                body = {"prompt": prompt, "response": solution_str}
                break
            if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
                chat = [message_to_wire(m, f"extra_info[{key!r}]") for m in prompt]
                body = {"messages": [*chat, {"role": "assistant", "content": solution_str}]}
                break
    if ground_truth is not None:
        body["label"] = plain_json(ground_truth)
    if data_source is not None or extra_info is not None:
        body["metadata"] = plain_json({"data_source": data_source, "extra_info": extra_info})
    return body


def plain_json(x: Any) -> Any:
    """``x`` as plain JSON values: verl's rows come from parquet, with numpy arrays and scalars."""
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    if isinstance(x, Mapping):
        return {str(k): plain_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain_json(v) for v in x]
    tolist = getattr(x, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return plain_json(tolist())
    return str(x)


def _float(reward: float | None) -> float:
    return 0.0 if reward is None else reward  # masked: verl needs a float (module docstring)


def _api_key() -> str | None:
    return os.environ.get(API_KEY_ENV) or None


def _client(urls: tuple[str, ...]) -> RewardClient:
    with _lock:
        client = _clients.get(urls)
        if client is None:
            client = _clients[urls] = RewardClient(list(urls), api_key=_api_key())
        return client


def _async_client(urls: tuple[str, ...]) -> AsyncRewardClient:
    per_loop = _async_clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(urls)
    if client is None:
        client = per_loop[urls] = AsyncRewardClient(list(urls), api_key=_api_key())
    return client


def close() -> None:
    """Close the blocking clients this module opened (they otherwise live as long as the process)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


async def aclose() -> None:
    """Close the asyncio clients this module opened in the running event loop."""
    per_loop = _async_clients.pop(asyncio.get_running_loop(), {})
    await asyncio.gather(*(client.aclose() for client in per_loop.values()))


def compute_score(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> float:
    """verl's custom reward function: the reward of one response."""
    urls = _urls(extra_info)
    (reward,) = _client(urls).score(
        [to_input(solution_str, extra_info, ground_truth, data_source)],
        model=_model(extra_info),
        truncate=True,
    )
    return _float(reward)


async def compute_score_async(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> float:
    """``compute_score`` as a coroutine, for verl's async reward loop: many samples in flight at once,
    batched together by the server."""
    urls = _urls(extra_info)
    client = _async_client(urls)
    (reward,) = await client.score(
        [to_input(solution_str, extra_info, ground_truth, data_source)],
        model=_model(extra_info),
        truncate=True,
    )
    return _float(reward)


def _batch(
    solution_strs: Sequence[str],
    extra_infos: Sequence[Any] | None,
    ground_truths: Sequence[Any],
    data_sources: Sequence[Any],
) -> list[tuple[tuple[tuple[str, ...], str | None], int, Input]]:
    n = len(solution_strs)
    infos: Sequence[Any] = extra_infos if extra_infos is not None else [None] * n
    for name, given in (
        ("extra_infos", infos),
        ("ground_truths", ground_truths),
        ("data_sources", data_sources),
    ):
        if len(given) != n:
            raise ValueError(f"{n} solution_strs but {len(given)} {name}")
    return [
        ((_urls(info), _model(info)), i, to_input(s, info, gt, ds))
        for i, (s, info, gt, ds) in enumerate(
            zip(solution_strs, infos, ground_truths, data_sources, strict=True)
        )
    ]


def _grouped(
    items: list[tuple[tuple[tuple[str, ...], str | None], int, Input]],
) -> dict[tuple[tuple[str, ...], str | None], list[tuple[int, Input]]]:
    """Samples by (server, model), so each group is one scoring call (chunked by the client)."""
    groups: dict[tuple[tuple[str, ...], str | None], list[tuple[int, Input]]] = {}
    for key, i, inp in items:
        groups.setdefault(key, []).append((i, inp))
    return groups


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """verl's batched signature (``reward_manager=batch``): rewards of a whole batch, in order."""
    out = [0.0] * len(solution_strs)
    items = _batch(solution_strs, extra_infos, ground_truths, data_sources)
    for (urls, model), group in _grouped(items).items():
        rewards = _client(urls).score([inp for _, inp in group], model=model, truncate=True)
        for (i, _), r in zip(group, rewards, strict=True):
            out[i] = _float(r)
    return out


async def compute_score_batch_async(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """``compute_score_batch`` as a coroutine (verl's reward loop awaits coroutine functions)."""
    out = [0.0] * len(solution_strs)
    groups = list(_grouped(_batch(solution_strs, extra_infos, ground_truths, data_sources)).items())
    results = await asyncio.gather(
        *(
            _async_client(urls).score([inp for _, inp in g], model=model, truncate=True)
            for (urls, model), g in groups
        )
    )
    for (_, group), rewards in zip(groups, results, strict=True):
        for (i, _), r in zip(group, rewards, strict=True):
            out[i] = _float(r)
    return out
