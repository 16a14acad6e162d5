"""The native gRPC API, ``rewardserve.v1.RewardService``: the HTTP API's twin over the same service.

Inputs are validated by the same pydantic models as HTTP (api/schemas.py), so a request is refused
for the same reason with the same message whichever transport brought it.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeAlias, cast

import grpc.aio
from pydantic import ValidationError

from rewardserve._proto.rewardserve.v1 import reward_pb2, reward_pb2_grpc
from rewardserve.api import routing
from rewardserve.api.grpc.status import error_info, time_left
from rewardserve.api.schemas import InputIn, validation_message
from rewardserve.errors import InputError, NotReady
from rewardserve.runtime import Runtime
from rewardserve.scoring.advantages import ADVANTAGES, Advantage, apply_advantages
from rewardserve.scoring.types import Reduce, RewardResult, ScoreInput, ScoreOptions, StepReduce

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
        "steps": list(msg.steps) or None,
        "group": msg.group if msg.HasField("group") else None,
    }
    for field in ("label", "metadata"):  # any JSON, carried as JSON text (empty: none)
        raw = getattr(msg, f"{field}_json")
        try:
            body[field] = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # RecursionError: nested too deep for the parser
            raise InputError(f"{field}_json is not valid JSON", index=index) from None
    try:
        return InputIn.model_validate(body).to_input()
    except ValidationError as exc:
        raise InputError(validation_message(exc), index=index) from None


def to_inputs(msgs: Sequence[reward_pb2.Input]) -> list[ScoreInput]:
    return [to_input(m, i) for i, m in enumerate(msgs)]


_REDUCE = ("mean", "min", "conservative")
_STEP_REDUCE = ("min", "last", "mean", "prod")


def model_ref(model: str, weights: Mapping[str, float]) -> routing.ModelRef:
    """The request's ``model`` name or its ad hoc ``weights`` (not both); neither: the default."""
    if weights:
        if model:
            raise InputError("give either model (a name) or weights (an ad hoc composite), not both")
        return dict(weights)
    return model or None


def score_options(request: Any, context: Context, *, truncate: bool) -> ScoreOptions:
    """truncate, reduce, step_reduce and the client's deadline, checked as HTTP checks them."""
    reduce, step_reduce = request.reduce or None, request.step_reduce or None
    if reduce is not None and reduce not in _REDUCE:
        raise InputError(f"reduce must be one of {list(_REDUCE)}, got {reduce!r}")
    if step_reduce is not None and step_reduce not in _STEP_REDUCE:
        raise InputError(f"step_reduce must be one of {list(_STEP_REDUCE)}, got {step_reduce!r}")
    return routing.options(
        truncate=truncate,
        reduce=cast(Reduce | None, reduce),
        step_reduce=cast(StepReduce | None, step_reduce),
        timeout=time_left(context),
    )


def _present(values: Mapping[str, float | None]) -> dict[str, float]:
    """A map of rewards without the masked ones (proto maps hold no null)."""
    return {k: v for k, v in values.items() if v is not None}


def detail(r: RewardResult) -> reward_pb2.Detail:
    """``details[i]`` as HTTP renders it (RewardResult.details()), field for field."""
    d = r.details()
    msg = reward_pb2.Detail(tokens=r.tokens, truncated=r.truncated, status=r.status, mask=r.mask)
    if r.objectives:
        msg.objectives.update(r.objectives)
    for key in ("raw", "mean", "std", "min", "conservative"):
        if d.get(key) is not None:
            setattr(msg, key, d[key])
    if r.members is not None:
        msg.members.update(_present(r.members))
    if r.components is not None:
        msg.components.update(_present(r.components))
    if r.step_scores is not None:
        msg.step_scores.extend(r.step_scores)
    if r.error is not None:
        msg.error = r.error
    if r.extras:
        msg.extras_json = json.dumps(r.extras)
    if r.advantage is not None:
        msg.advantage = r.advantage
    return msg


def score_response(model: str, results: list[RewardResult]) -> reward_pb2.ScoreResponse:
    """Same content as the HTTP ScoreResponse (schemas.ScoreResponse.build); a masked score is NaN."""
    return reward_pb2.ScoreResponse(
        model=model,
        scores=[math.nan if r.score is None else r.score for r in results],
        details=[detail(r) for r in results],
        usage=reward_pb2.Usage(prompt_tokens=sum(r.tokens for r in results)),
    )


_CARD_FIELDS = frozenset(reward_pb2.ModelCard.DESCRIPTOR.fields_by_name) - {"card_json", "members", "weights"}


def model_card(card: Mapping[str, Any]) -> reward_pb2.ModelCard:
    """A registry entry's card: the fields the message has, plus the whole card as JSON."""
    msg = reward_pb2.ModelCard(**{k: v for k, v in card.items() if k in _CARD_FIELDS and v is not None})
    members = card.get("members")
    if isinstance(members, list):
        msg.members.extend(str(m) for m in members)
    weights = card.get("weights")
    if isinstance(weights, Mapping):
        msg.weights.update({str(k): float(v) for k, v in weights.items()})
    msg.card_json = json.dumps(card, sort_keys=True, default=str)
    return msg


def advantage_of(name: str) -> Advantage | None:
    """The request's ``advantage`` method ("" = none), checked as HTTP checks it."""
    if not name:
        return None
    if name not in ADVANTAGES:
        raise InputError(f"advantage must be one of {list(ADVANTAGES)}, got {name!r}")
    return cast(Advantage, name)


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Thin handlers over the runtime's registry (api/routing.py); exceptions are mapped by
    status.ErrorInterceptor."""

    def __init__(self, runtime: Runtime, draining: asyncio.Event) -> None:
        self.runtime = runtime
        self.draining = draining

    async def _score(
        self, request: reward_pb2.ScoreRequest | reward_pb2.ScoreStreamRequest, context: Context
    ) -> reward_pb2.ScoreResponse:
        model = model_ref(request.model, request.weights)
        opts = score_options(request, context, truncate=request.truncate)
        method = advantage_of(getattr(request, "advantage", ""))
        parsed = to_inputs(request.inputs)
        source, results = await routing.score(self.runtime, model, parsed, opts)
        if method is not None:
            results = apply_advantages(parsed, results, method)
        return score_response(source.name, results)

    async def Score(self, request: reward_pb2.ScoreRequest, context: Context) -> reward_pb2.ScoreResponse:
        return await self._score(request, context)

    async def Compare(
        self, request: reward_pb2.CompareRequest, context: Context
    ) -> reward_pb2.CompareResponse:
        model = model_ref(request.model, request.weights)
        opts = score_options(request, context, truncate=request.truncate)
        pairs = [
            (ScoreInput(prompt=p.prompt, response=p.a), ScoreInput(prompt=p.prompt, response=p.b))
            for p in request.pairs
        ]
        source, results = await routing.compare(self.runtime, model, pairs, opts)
        return reward_pb2.CompareResponse(
            model=source.name,
            probabilities=[math.nan if r.probability is None else r.probability for r in results],
            margins=[math.nan if r.margin is None else r.margin for r in results],
        )

    async def ListModels(
        self, request: reward_pb2.ListModelsRequest, context: Context
    ) -> reward_pb2.ListModelsResponse:
        registry = self.runtime.require_registry()
        return reward_pb2.ListModelsResponse(models=[model_card(c) for c in registry.cards()])

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
                result = await self._score(msg, context)
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
