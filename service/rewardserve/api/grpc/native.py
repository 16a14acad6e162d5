"""The native gRPC API, ``rewardserve.v1.RewardService``: the HTTP API's twin over the same service.

Inputs are validated by the same pydantic models as HTTP (api/schemas.py), so a request is refused
for the same reason with the same message whichever transport brought it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import grpc.aio
from pydantic import ValidationError

from rewardserve._proto.rewardserve.v1 import reward_pb2, reward_pb2_grpc
from rewardserve.api.grpc.status import error_info, time_left
from rewardserve.api.schemas import InputIn, validation_message
from rewardserve.errors import InputError, NotReady
from rewardserve.runtime import Runtime
from rewardserve.scoring.types import ModelInfo, ScoreInput, ScoreOutput

# grpc ships no type hints: this documents what the handlers get.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def to_input(msg: reward_pb2.Input, index: int) -> ScoreInput:
    """A proto Input -> ScoreInput, with the HTTP schema's rules (exactly one kind, both halves of a
    pair, non-empty messages). An empty ``messages`` list reads as "not given", as proto3 has no
    presence for repeated fields."""
    body: dict[str, Any] = {
        "prompt": msg.prompt if msg.HasField("prompt") else None,
        "response": msg.response if msg.HasField("response") else None,
        "messages": [{"role": m.role, "content": m.content} for m in msg.messages] or None,
        "text": msg.text if msg.HasField("text") else None,
    }
    try:
        return InputIn.model_validate(body).to_input()
    except ValidationError as exc:
        raise InputError(validation_message(exc), index=index) from None


def to_inputs(msgs: Sequence[reward_pb2.Input]) -> list[ScoreInput]:
    return [to_input(m, i) for i, m in enumerate(msgs)]


def score_response(
    model: str, outputs: list[ScoreOutput], objectives: tuple[str, ...]
) -> reward_pb2.ScoreResponse:
    """Same content as the HTTP ScoreResponse (schemas.ScoreResponse.build)."""
    response = reward_pb2.ScoreResponse(
        model=model,
        scores=[o.score for o in outputs],
        usage=reward_pb2.Usage(prompt_tokens=sum(o.tokens for o in outputs)),
    )
    for o in outputs:
        detail = response.details.add(tokens=o.tokens, truncated=o.truncated)
        if objectives:
            detail.objectives.update(zip(objectives, o.values, strict=True))
    return response


def model_card(info: ModelInfo) -> reward_pb2.ModelCard:
    return reward_pb2.ModelCard(**info.card())


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Thin handlers over ``runtime.scoring``; exceptions are mapped by status.ErrorInterceptor."""

    def __init__(self, runtime: Runtime, draining: asyncio.Event) -> None:
        self.runtime = runtime
        self.draining = draining

    async def _score(
        self, model: str, inputs: Sequence[reward_pb2.Input], truncate: bool, context: Context
    ) -> reward_pb2.ScoreResponse:
        scoring = self.runtime.require_scoring()
        outputs = await scoring.score(
            to_inputs(inputs), model=model or None, truncate=truncate, timeout=time_left(context)
        )
        return score_response(scoring.name, outputs, scoring.objectives)

    async def Score(self, request: reward_pb2.ScoreRequest, context: Context) -> reward_pb2.ScoreResponse:
        return await self._score(request.model, request.inputs, request.truncate, context)

    async def Compare(
        self, request: reward_pb2.CompareRequest, context: Context
    ) -> reward_pb2.CompareResponse:
        scoring = self.runtime.require_scoring()
        pairs = [
            (ScoreInput(prompt=p.prompt, response=p.a), ScoreInput(prompt=p.prompt, response=p.b))
            for p in request.pairs
        ]
        results = await scoring.compare(
            pairs, model=request.model or None, truncate=request.truncate, timeout=time_left(context)
        )
        return reward_pb2.CompareResponse(
            model=scoring.name,
            probabilities=[r.probability for r in results],
            margins=[r.margin for r in results],
        )

    async def ListModels(
        self, request: reward_pb2.ListModelsRequest, context: Context
    ) -> reward_pb2.ListModelsResponse:
        scoring = self.runtime.require_scoring()
        return reward_pb2.ListModelsResponse(models=[model_card(m) for m in scoring.models()])

    async def ScoreStream(
        self, requests: AsyncIterator[reward_pb2.ScoreStreamRequest], context: Context
    ) -> AsyncIterator[reward_pb2.ScoreStreamResponse]:
        """Each message is its own scoring call (the batcher batches them with everything else);
        answers are written as they complete. At most ``stream_max_pending`` messages are taken and not
        yet answered (being scored, or scored and waiting for the client to read): at the limit the
        stream is not read further, so HTTP/2 flow control pushes back on a client that sends without
        reading, instead of the server buffering its answers without bound. Once the
        server drains, the stream stops reading, answers what it took, and ends with UNAVAILABLE."""
        answers: asyncio.Queue[reward_pb2.ScoreStreamResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(self.runtime.settings.stream_max_pending)
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
                yield response  # returns once grpc took the message: then its slot frees
                window.release()
            await reader  # re-raises a failure to read the stream
            if drained:
                raise NotReady("server is draining; resend unanswered messages to another replica")
        finally:  # the client went away, or we are done: nothing of this stream may outlive it
            reader.cancel()
            for task in list(pending):
                task.cancel()
            await asyncio.gather(reader, *pending, return_exceptions=True)
