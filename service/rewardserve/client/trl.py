"""TRL reward functions backed by a rewardserve server.

    from trl import GRPOTrainer
    from rewardserve.client.trl import reward_function

    trainer = GRPOTrainer(model=..., reward_funcs=reward_function("http://rm:8000"), ...)

TRL calls a reward function as ``fn(prompts=..., completions=..., completion_ids=..., **columns)``
and logs its rewards under ``rewards/<fn.__name__>/mean``. Both of TRL's dataset formats work:

* standard: ``prompts`` and ``completions`` are strings -> scored as ``{"prompt", "response"}``,
  i.e. through the reward model's chat template (``as_text=True`` scores ``prompt + completion``
  as raw text instead, which is what TRL does with a local reward model on a standard dataset);
* conversational: ``prompts`` are message lists and ``completions`` lists of assistant messages ->
  scored as the conversation ``prompt + completion``.

``label_column="answer"`` sends that dataset column (TRL passes every extra column as a keyword
argument) as each input's ``label``: what a reward function (``math``, your verifier) or a judge
checks the completion against. A sample a reward source fails on (timeout, error) gets ``None``,
which TRL's GRPOTrainer turns into NaN and leaves out of its statistics, never a silent 0.

``asynchronous=True`` returns an ``async def`` reward function: GRPOTrainer (TRL >= 1.0) runs async
reward functions concurrently on its own event loop, so scoring overlaps other reward functions.

This module imports nothing from TRL: the functions only need to look like what TRL calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

from rewardserve.client.aio import AsyncRewardClient
from rewardserve.client.sync import RewardClient
from rewardserve.client.types import Input, ModelRef, input_to_wire

__all__ = ["AsyncRewardFunction", "RewardFunction", "reward_function", "to_inputs"]


def to_inputs(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    as_text: bool = False,
    labels: Sequence[Any] | None = None,
) -> list[Input]:
    """What to score for each (prompt, completion) TRL hands over, with ``labels[i]`` as its label."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if labels is not None:
        if len(labels) != len(prompts):
            raise ValueError(f"{len(labels)} labels but {len(prompts)} prompts")
        plain = to_inputs(prompts, completions, as_text=as_text)
        return [
            {**input_to_wire(x, i), "label": y} for i, (x, y) in enumerate(zip(plain, labels, strict=True))
        ]
    out: list[Input] = []
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        if isinstance(p, str) and isinstance(c, str):
            out.append(p + c if as_text else (p, c))
        elif _is_chat(p) and _is_chat(c):
            out.append([*p, *c])
        elif _is_chat(p) and isinstance(c, str):  # a conversational prompt with a text completion
            out.append([*p, {"role": "assistant", "content": c}])
        else:
            raise TypeError(
                f"sample {i}: expected text prompt and completion, or lists of chat messages; "
                f"got {type(p).__name__} and {type(c).__name__}"
            )
    return out


def _is_chat(x: Any) -> bool:
    return isinstance(x, list | tuple) and all(isinstance(m, Mapping) for m in x)


class _Base:
    def __init__(
        self,
        url: str | Sequence[str],
        *,
        model: ModelRef,
        truncate: bool,
        as_text: bool,
        name: str,
        client_options: Mapping[str, Any],
        label_column: str | None = None,
    ) -> None:
        self.url = url
        self.label_column = label_column
        self.model = model
        self.truncate = truncate
        self.as_text = as_text
        self.__name__ = name  # what TRL logs the rewards under
        self.client_options = dict(client_options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self.model!r}, name={self.__name__!r})"

    def inputs(
        self, prompts: Sequence[Any], completions: Sequence[Any], columns: Mapping[str, Any]
    ) -> list[Input]:
        labels = None
        if self.label_column is not None:
            if self.label_column not in columns:
                raise KeyError(
                    f"label_column={self.label_column!r}: TRL passed no such dataset column; "
                    f"columns: {sorted(columns)}"
                )
            labels = columns[self.label_column]
        return to_inputs(prompts, completions, as_text=self.as_text, labels=labels)


class RewardFunction(_Base):
    """A blocking TRL reward function. The client (and its connections) is created on first call
    and dropped when pickled, so the function can be sent to other processes."""

    _client: RewardClient | None = None

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        if self._client is None:
            self._client = RewardClient(self.url, **self.client_options)
        inputs = self.inputs(prompts, completions, kwargs)
        return self._client.score(inputs, model=self.model, truncate=self.truncate)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_client"}


class AsyncRewardFunction(_Base):
    """An ``async`` TRL reward function. Its client belongs to the event loop that first awaits it
    (TRL keeps one loop for all async reward functions); a call from another loop gets a new one."""

    _client: AsyncRewardClient | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = AsyncRewardClient(self.url, **self.client_options), loop
        inputs = self.inputs(prompts, completions, kwargs)
        return await self._client.score(inputs, model=self.model, truncate=self.truncate)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_loop")}


@overload
def reward_function(
    url: str | Sequence[str],
    *,
    model: ModelRef = ...,
    truncate: bool = ...,
    as_text: bool = ...,
    name: str = ...,
    label_column: str | None = ...,
    asynchronous: Literal[False] = ...,
    **client_options: Any,
) -> RewardFunction: ...


@overload
def reward_function(
    url: str | Sequence[str],
    *,
    model: ModelRef = ...,
    truncate: bool = ...,
    as_text: bool = ...,
    name: str = ...,
    label_column: str | None = ...,
    asynchronous: Literal[True],
    **client_options: Any,
) -> AsyncRewardFunction: ...


def reward_function(
    url: str | Sequence[str],
    *,
    model: ModelRef = None,
    truncate: bool = True,
    as_text: bool = False,
    name: str = "rewardserve",
    label_column: str | None = None,
    asynchronous: bool = False,
    **client_options: Any,
) -> RewardFunction | AsyncRewardFunction:
    """A TRL reward function scoring with the rewardserve at ``url`` (one URL or several).

    ``model``: what scores, by name (a model, ensemble, composite or PRM the server declares;
    default: the server's first entry), or ad hoc weights ``{"helpful": 1.0, "safety": 0.5}``.
    ``truncate`` (default on): an over-long sample is cut to the reward model's limit instead of
    failing the training step, as OpenRLHF's remote reward does. ``name``: the ``__name__`` TRL
    logs rewards under (give each function its own when passing several). ``client_options`` go
    to ``RewardClient`` (``api_key`` for a server that requires one, ``tls_ca``, ``timeout``,
    ``retry``, ``max_inputs_per_request``...). ``label_column``: the dataset column sent as each
    input's label.
    """
    cls = AsyncRewardFunction if asynchronous else RewardFunction
    return cls(
        url,
        model=model,
        truncate=truncate,
        as_text=as_text,
        name=name,
        client_options=client_options,
        label_column=label_column,
    )
