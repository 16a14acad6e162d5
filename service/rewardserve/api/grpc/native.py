"""The native gRPC API, ``rewardserve.v1.RewardService``: the HTTP API's twin over the same service.

Inputs are validated by the same pydantic models as HTTP (api/schemas.py), so a request is refused
for the same reason with the same message whichever transport brought it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import grpc.aio
from pydantic import ValidationError

from rewardserve._proto.rewardserve.v1 import reward_pb2, reward_pb2_grpc
from rewardserve.api.grpc.status import error_info, time_left
from rewardserve.api.schemas import InputIn, validation_message
from rewardserve.errors import InputError, NotReady
from rewardserve.runtime import Runtime
from rewardserve.scoring.advantages import ADVANTAGES, Advantage, apply_advantages
from rewardserve.scoring.types import ModelInfo, RewardResult, ScoreInput, ScoreOptions
from rewardserve.sources.base import compare as compare_pairs

# grpc ships no type hints: this documents what the handlers get.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# Messages of one ScoreStream being scored at once. When it is full the stream is not read further,
# so HTTP/2 flow control pushes back on the client instead of the server buffering without bound.
STREAM_WINDOW = 256


def to_input(msg: reward_pb2.Input, index: int) -> ScoreInput:
    """A proto Input -> ScoreInput, with the HTTP schema's rules (exactly one kind, both halves of a
    pair, non-empty messages). An empty ``messages`` list reads as "not given", as proto3 has no
    presence for repeated fields."""
    body: dict[str, Any] = {
        "prompt": msg.prompt if msg.HasField("prompt") else None,
        "response": msg.response if msg.HasField("response") else None,
        "messages": [{"role": m.role, "content": m.content} for m in msg.messages] or None,
        "text": msg.text if msg.HasField("text") else None,
        "group": msg.group if msg.HasField("group") else None,
    }
    for field in ("label", "metadata"):  # any JSON, carried as JSON text (empty: none)
        raw = getattr(msg, f"{field}_json")
        try:
            body[field] = json.loads(raw) if raw else None
        except ValueError:
            raise InputError(f"{field}_json is not valid JSON", index=index) from None
    try:
        return InputIn.model_validate(body).to_input()
    except ValidationError as exc:
        raise InputError(validation_message(exc), index=index) from None


def to_inputs(msgs: Sequence[reward_pb2.Input]) -> list[ScoreInput]:
    return [to_input(m, i) for i, m in enumerate(msgs)]


def score_response(model: str, results: list[RewardResult]) -> reward_pb2.ScoreResponse:
    """Same content as the HTTP ScoreResponse (schemas.ScoreResponse.build); a masked score is NaN
    (proto3 doubles have no null) with the Detail's mask set."""
    response = reward_pb2.ScoreResponse(
        model=model,
        scores=[r.score if r.score is not None else math.nan for r in results],
        usage=reward_pb2.Usage(prompt_tokens=sum(r.tokens for r in results)),
    )
    for r in results:
        detail = response.details.add(tokens=r.tokens, truncated=r.truncated, status=r.status, mask=r.mask)
        if r.objectives:
            detail.objectives.update(r.objectives)
        if r.extras:
            detail.extras_json = json.dumps(r.extras)
        if r.advantage is not None:
            detail.advantage = r.advantage
        if r.error is not None:
            detail.error = r.error
    return response


def advantage_of(name: str) -> Advantage | None:
    if not name:
        return None
    if name not in ADVANTAGES:
        raise InputError(f"advantage must be one of {list(ADVANTAGES)}, got {name!r}")
    return name  # type: ignore[return-value]


def model_card(info: ModelInfo) -> reward_pb2.ModelCard:
    return reward_pb2.ModelCard(**info.card(), kind="model")


def source_card(card: dict[str, Any]) -> reward_pb2.ModelCard:
    """A registry entry's card: the fields ModelCard has (a function or judge sets id and kind)."""
    fields = reward_pb2.ModelCard.DESCRIPTOR.fields_by_name
    return reward_pb2.ModelCard(**{k: v for k, v in card.items() if k in fields and v is not None})


def deadline_of(context: Context) -> float | None:
    left = time_left(context)
    return None if left is None else time.monotonic() + left


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Thin handlers over ``runtime.scoring``; exceptions are mapped by status.ErrorInterceptor."""

    def __init__(self, runtime: Runtime, draining: asyncio.Event) -> None:
        self.runtime = runtime
        self.draining = draining

    async def _score(
        self,
        model: str,
        inputs: Sequence[reward_pb2.Input],
        truncate: bool,
        context: Context,
        advantage: str = "",
    ) -> reward_pb2.ScoreResponse:
        source = self.runtime.source(model or None)
        method = advantage_of(advantage)
        parsed = to_inputs(inputs)
        opts = ScoreOptions(truncate=truncate, deadline=deadline_of(context))
        results = await source.score(parsed, opts) if parsed else []
        if method is not None:
            results = apply_advantages(parsed, results, method)
        return score_response(source.name, results)

    async def Score(self, request: reward_pb2.ScoreRequest, context: Context) -> reward_pb2.ScoreResponse:
        return await self._score(request.model, request.inputs, request.truncate, context, request.advantage)

    async def Compare(
        self, request: reward_pb2.CompareRequest, context: Context
    ) -> reward_pb2.CompareResponse:
        source = self.runtime.source(request.model or None)
        pairs = [
            (ScoreInput(prompt=p.prompt, response=p.a), ScoreInput(prompt=p.prompt, response=p.b))
            for p in request.pairs
        ]
        opts = ScoreOptions(truncate=request.truncate, deadline=deadline_of(context))
        results = await compare_pairs(source, pairs, opts) if pairs else []
        nan = math.nan  # a masked side: NaN, as in Score
        return reward_pb2.CompareResponse(
            model=source.name,
            probabilities=[nan if r.probability is None else r.probability for r in results],
            margins=[nan if r.margin is None else r.margin for r in results],
        )

    async def ListModels(
        self, request: reward_pb2.ListModelsRequest, context: Context
    ) -> reward_pb2.ListModelsResponse:
        if self.runtime.registry is not None:
            self.runtime.source()  # NotReady while draining
            return reward_pb2.ListModelsResponse(
                models=[source_card(c) for c in self.runtime.registry.cards()]
            )
        scoring = self.runtime.require_scoring()
        return reward_pb2.ListModelsResponse(models=[model_card(m) for m in scoring.models()])

    async def ScoreStream(
        self, requests: AsyncIterator[reward_pb2.ScoreStreamRequest], context: Context
    ) -> AsyncIterator[reward_pb2.ScoreStreamResponse]:
        """Each message is its own scoring call (the batcher batches them with everything else);
        answers are written as they complete. Up to STREAM_WINDOW messages are in flight. Once the
        server drains, the stream stops reading, answers what it took, and ends with UNAVAILABLE."""
        answers: asyncio.Queue[reward_pb2.ScoreStreamResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        pending: set[asyncio.Task[None]] = set()
        drained = False

        async def answer(msg: reward_pb2.ScoreStreamRequest) -> None:
            try:
                result = await self._score(msg.model, msg.inputs, msg.truncate, context)
                answers.put_nowait(reward_pb2.ScoreStreamResponse(id=msg.id, response=result))
            except Exception as exc:  # one bad message answers with an error; the stream goes on
                code, info = error_info(exc)
                error = reward_pb2.Error(code=code.value[0], message=info.message)
                answers.put_nowait(reward_pb2.ScoreStreamResponse(id=msg.id, error=error))
            finally:
                window.release()

        async def read() -> None:
            nonlocal drained
            stop = asyncio.ensure_future(self.draining.wait())
            messages = aiter(requests)
            following: asyncio.Future[reward_pb2.ScoreStreamRequest] | None = None
            try:
                while True:
                    await window.acquire()
                    following = asyncio.ensure_future(anext(messages))
                    await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if not following.done():
                        following.cancel()
                        window.release()
                        drained = True
                        break
                    try:
                        msg = following.result()
                    except StopAsyncIteration:
                        window.release()
                        break
                    task = asyncio.create_task(answer(msg))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.wait(set(pending))
            finally:
                stop.cancel()
                if following is not None:
                    following.cancel()  # a read still pending when we stop (or are cancelled)
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
            await reader  # re-raises a failure to read the stream
            if drained:
                raise NotReady("server is draining; resend unanswered messages to another replica")
        finally:  # the client went away, or we are done: nothing of this stream may outlive it
            reader.cancel()
            for task in list(pending):
                task.cancel()
            await asyncio.gather(reader, *pending, return_exceptions=True)
