"""HTTP routes for policy generation: /v1/generate (JSON or server-sent events), /v1/rollout,
/v1/generator/weights. Thin: parse, call the services (``deps.RuntimeDep``), shape the answer.

A client that goes away aborts its work. Streams: ``EventStream`` watches for the disconnect while it
sends, and cancelling the stream cancels its vLLM requests. Plain calls: the work runs as a task that
is cancelled when the connection closes first (uvicorn would otherwise let it run to the end for
nobody).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from rewardserve.api.auth import Caller, allowed_weights_path
from rewardserve.api.errors import classify
from rewardserve.api.generation_schemas import (
    GenerateRequest,
    GenerateResponse,
    RolloutRequest,
    RolloutResponse,
    WeightsRequest,
    WeightsResponse,
)
from rewardserve.api.http.cancel import CLIENT_GONE, unless_disconnected, wait_disconnect
from rewardserve.api.http.deps import RuntimeDep
from rewardserve.errors import ClientGone
from rewardserve.generation.service import GenerationStream

log = logging.getLogger(__name__)

router = APIRouter()


class EventStream(StreamingResponse):
    """Server-sent events that stop (and close their source) as soon as the client disconnects.

    Starlette only notices a disconnect under ASGI spec < 2.4, and otherwise when a send fails, which
    never happens while generation is paused for a weight swap; so always listen, and always close
    the source iterator, which aborts its requests in the engine.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # client gone mid-send: same as a disconnect
                        await self.stream_response(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await wait_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            await self._events.aclose()


def _event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def _sse(stream: GenerationStream, model: str) -> AsyncGenerator[bytes, None]:
    """One event per sample delta, then a summary event and ``[DONE]``. An error after the stream
    began is sent as an event (the status line is already out)."""
    completion_tokens = 0
    try:
        async for d in stream:
            completion_tokens += len(d.token_ids)
            event: dict[str, Any] = {
                "prompt_index": d.prompt_index,
                "index": d.index,
                "text": d.text,
                "token_ids": list(d.token_ids),
                "cumulative_logprob": d.cumulative_logprob,
                "finish_reason": d.finish_reason,
            }
            if d.logprobs is not None:
                event["logprobs"] = list(d.logprobs)
            yield _event(event)
        usage = {"prompt_tokens": sum(stream.prompt_tokens), "completion_tokens": completion_tokens}
        yield _event(
            {"done": True, "model": model, "weights_version": stream.weights_version, "usage": usage}
        )
        yield _event("[DONE]")
    except Exception as exc:
        info = classify(exc)
        yield _event({"error": info.message, "type": info.type})
    finally:
        await stream.aclose()


@router.post("/v1/generate", response_model=None)
async def generate(body: GenerateRequest, request: Request, runtime: RuntimeDep) -> Response:
    """n samples per prompt; ``"stream": true`` answers with server-sent events."""
    gen = runtime.require_generation()
    prompts, opts = body.to_prompts(), body.to_options()
    if body.stream:
        stream = await gen.open_stream(prompts, opts, generator=body.model)
        return EventStream(_sse(stream, gen.name))
    try:
        result = await unless_disconnected(request, gen.generate(prompts, opts, generator=body.model))
    except ClientGone:
        return Response(status_code=CLIENT_GONE)
    return JSONResponse(GenerateResponse.build(gen.name, result).model_dump())


@router.post("/v1/rollout", response_model=None)
async def rollout(body: RolloutRequest, request: Request, runtime: RuntimeDep) -> Response:
    """Generate, score each sample with the reward model, group statistics (and GRPO advantages)."""
    from rewardserve.generation.rollout import rollout as run_rollout

    gen, scoring = runtime.require_generation(), runtime.require_scoring(body.model)
    work = run_rollout(
        gen,
        scoring,
        body.to_prompts(),
        body.to_options(),
        model=body.model,
        generator=body.generator,
        truncate=body.truncate,
        advantages=body.advantages,
        eps=body.eps,
    )
    try:
        result = await unless_disconnected(request, work)
    except ClientGone:
        return Response(status_code=CLIENT_GONE)
    return JSONResponse(RolloutResponse.build(gen.name, result).model_dump())


@router.post("/v1/generator/weights")
async def reload_weights(body: WeightsRequest, request: Request, runtime: RuntimeDep) -> WeightsResponse:
    """Load a same-architecture checkpoint into the running policy; new generation waits meanwhile.
    Admin key only (when keys are configured), and only from inside --weights-root."""
    caller: Caller | None = request.scope.get("state", {}).get("caller")
    who = caller.key_id if caller is not None else "-"
    gen = runtime.require_generation()  # 404 on a scoring-only server, whatever the path
    try:
        path = allowed_weights_path(runtime.settings.weights_root, body.path)
        version = await gen.reload_weights(path)
    except Exception as exc:
        log.warning("weights reload by key %s from %r: refused (%s)", who, body.path, type(exc).__name__)
        raise
    log.info("weights reload by key %s from %r: loaded, version %d", who, body.path, version)
    return WeightsResponse(model=gen.name, weights_version=version)
