"""``rewardserve.v1.GenerationService``: the gRPC twin of /v1/generate and /v1/rollout.

Requests are turned into the HTTP request models (api/generation_schemas.py) and validated there, so a
bad request is refused for the same reason with the same message whichever transport brought it.
Unary errors are mapped by status.py's ErrorInterceptor; the server-streaming method maps its own (the
interceptor wraps unary and bidi methods only). A cancelled call cancels its handler task, which
cancels the vLLM requests: the engine aborts them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc.aio
from pydantic import BaseModel, ValidationError

from rewardserve._proto.rewardserve.v1 import generation_pb2 as pb
from rewardserve._proto.rewardserve.v1 import generation_pb2_grpc
from rewardserve.api.generation_schemas import GenerateRequest, RolloutRequest
from rewardserve.api.grpc.status import abort
from rewardserve.api.schemas import validation_message
from rewardserve.errors import InputError
from rewardserve.generation.rollout import RolloutResult
from rewardserve.generation.types import GenerateResult, Sample
from rewardserve.runtime import Runtime

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_SAMPLING_FIELDS = ("n", "max_tokens", "temperature", "top_p", "top_k", "seed")


def _body(msg: Any, sampling: pb.SamplingParams) -> dict[str, Any]:
    """Prompts/messages and sampling fields as the HTTP JSON body would carry them. Unset optional
    fields are left out (HTTP defaults); proto3 cannot tell an empty list from a missing one, so the
    kind that has items is the one given, and neither is an empty call (as ``"prompts": []``)."""
    body: dict[str, Any] = {
        name: getattr(sampling, name) for name in _SAMPLING_FIELDS if sampling.HasField(name)
    }
    body |= {
        "logprobs": sampling.logprobs,
        "top_logprobs": sampling.top_logprobs,
        "ignore_eos": sampling.ignore_eos,
    }
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if msg.messages:
        body["messages"] = [
            [{"role": m.role, "content": m.content} for m in c.messages] for c in msg.messages
        ]
    if msg.prompts or not msg.messages:  # both given: validation refuses it; neither: an empty call
        body["prompts"] = list(msg.prompts)
    return body


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InputError(validation_message(exc)) from None


def _sample(s: Sample) -> pb.Sample:
    out = pb.Sample(index=s.index, text=s.text, token_ids=s.token_ids, finish_reason=s.finish_reason or "")
    if s.cumulative_logprob is not None:
        out.cumulative_logprob = s.cumulative_logprob
    if s.logprobs is not None:
        out.logprobs.extend(s.logprobs)
    for step in s.top_logprobs or ():
        out.top_logprobs.add().logprobs.update(step)
    return out


def generate_response(model: str, r: GenerateResult) -> pb.GenerateResponse:
    out = pb.GenerateResponse(model=model, weights_version=r.weights_version)
    for p in r.results:
        out.results.add(prompt_tokens=p.prompt_tokens, samples=[_sample(s) for s in p.samples])
    out.usage.prompt_tokens = sum(p.prompt_tokens for p in r.results)
    out.usage.completion_tokens = sum(len(s.token_ids) for p in r.results for s in p.samples)
    return out


def rollout_response(generator: str, r: RolloutResult) -> pb.RolloutResponse:
    out = pb.RolloutResponse(model=r.reward_model, generator=generator, weights_version=r.weights_version)
    for g in r.groups:
        group = out.groups.add(prompt_tokens=g.prompt_tokens)
        if g.mean is not None and g.std is not None:
            group.mean, group.std = g.mean, g.std
        for s in g.samples:
            # A masked reward is 0.0 on the wire with mask set (proto3 doubles have no null).
            scored = group.samples.add(
                sample=_sample(s.sample), reward=s.reward or 0.0, mask=s.reward is None
            )
            if s.advantage is not None:
                scored.advantage = s.advantage
    out.usage.prompt_tokens = sum(g.prompt_tokens for g in r.groups)
    out.usage.completion_tokens = sum(len(s.sample.token_ids) for g in r.groups for s in g.samples)
    out.usage.reward_tokens = r.reward_tokens
    return out


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Generate(self, request: pb.GenerateRequest, context: Context) -> pb.GenerateResponse:
        gen = self.runtime.require_generation()
        body: GenerateRequest = _validate(GenerateRequest, _body(request, request.sampling))
        result = await gen.generate(body.to_prompts(), body.to_options(), generator=request.model or None)
        return generate_response(gen.name, result)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        try:
            gen = self.runtime.require_generation()
            body: GenerateRequest = _validate(GenerateRequest, _body(request, request.sampling))
            stream = await gen.open_stream(
                body.to_prompts(), body.to_options(), generator=request.model or None
            )
        except Exception as exc:
            await abort(context, exc)
        completion_tokens = 0
        try:
            async for d in stream:
                completion_tokens += len(d.token_ids)
                delta = pb.SampleDelta(
                    prompt_index=d.prompt_index,
                    index=d.index,
                    text=d.text,
                    token_ids=d.token_ids,
                    logprobs=d.logprobs or (),
                    finish_reason=d.finish_reason or "",
                )
                if d.cumulative_logprob is not None:
                    delta.cumulative_logprob = d.cumulative_logprob
                yield pb.GenerateStreamResponse(delta=delta)
            usage = pb.GenerationUsage(
                prompt_tokens=sum(stream.prompt_tokens), completion_tokens=completion_tokens
            )
            done = pb.StreamDone(model=gen.name, weights_version=stream.weights_version, usage=usage)
            yield pb.GenerateStreamResponse(done=done)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)
        finally:
            await stream.aclose()  # a cancelled call lands here too: its requests are aborted

    async def Rollout(self, request: pb.RolloutRequest, context: Context) -> pb.RolloutResponse:
        from rewardserve.generation.rollout import rollout

        gen = self.runtime.require_generation()
        scoring = self.runtime.require_scoring(request.model or None)
        fields = _body(request, request.sampling)
        fields |= {"truncate": request.truncate, "advantages": request.advantages}
        if request.HasField("eps"):
            fields["eps"] = request.eps
        body: RolloutRequest = _validate(RolloutRequest, fields)
        result = await rollout(
            gen,
            scoring,
            body.to_prompts(),
            body.to_options(),
            model=request.model or None,
            generator=request.generator or None,
            truncate=body.truncate,
            advantages=body.advantages,
            eps=body.eps,
        )
        return rollout_response(gen.name, result)
