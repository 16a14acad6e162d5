"""gRPC transport: the native ``rewardserve.v1.RewardService`` and ``GenerationService`` through the
generated stubs.

Requests and answers are converted from and to the HTTP JSON form, so the clients above see one
shape whatever the transport. One channel per server: a channel multiplexes every call over one
HTTP/2 connection and reconnects by itself, which is gRPC's connection pooling.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio

from rewardserve._proto.rewardserve.v1 import generation_pb2, generation_pb2_grpc, reward_pb2, reward_pb2_grpc
from rewardserve.client import errors
from rewardserve.client._core import TlsFiles

JSON = dict[str, Any]

# The server enforces its own size limit (with a clear error); the client should not refuse a large
# answer to a large request it was allowed to send.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # After a server restart, reconnect within seconds: gRPC's default reconnect backoff grows to
    # 120 s, and calls fail fast with UNAVAILABLE meanwhile, long after the server is back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_BY_CODE: dict[grpc.StatusCode, type[errors.RewardServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: errors.InvalidRequest,
    grpc.StatusCode.NOT_FOUND: errors.ModelNotFound,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthError,
    grpc.StatusCode.PERMISSION_DENIED: errors.Forbidden,
    grpc.StatusCode.UNIMPLEMENTED: errors.NotSupported,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


def rpc_error(url: str, exc: grpc.RpcError) -> errors.RewardServeError:
    """The client error for a failed RPC (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code: grpc.StatusCode = exc.code()
    details = str(exc.details() or code.name)
    retry_after = None
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after":
            with contextlib.suppress(ValueError):
                retry_after = max(0.0, float(value))
    cls = _BY_CODE.get(code, errors.ServerError)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is None and "larger than" in details:
        cls = errors.InvalidRequest  # a message over a size limit: retrying cannot help
    return cls(details, endpoint=url, status=code.name, retry_after_s=retry_after)


# --- JSON <-> protobuf ---------------------------------------------------------------------------


def _input(body: Mapping[str, Any]) -> reward_pb2.Input:
    messages = [
        reward_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in body.get("messages") or ()
    ]
    extra: dict[str, Any] = {}
    for key in ("label", "metadata"):  # any JSON, as JSON text on the wire
        if body.get(key) is not None:
            extra[f"{key}_json"] = json.dumps(body[key])
    if body.get("group") is not None:
        extra["group"] = str(body["group"])
    return reward_pb2.Input(
        prompt=body.get("prompt"),
        response=body.get("response"),
        messages=messages,
        text=body.get("text"),
        steps=body.get("steps") or (),
        **extra,
    )


def _source_fields(body: JSON) -> dict[str, Any]:
    """``model`` (a name, or ad hoc weights -> ``weights``), ``reduce``, ``step_reduce``."""
    model = body.get("model")
    out: dict[str, Any] = {"reduce": body.get("reduce") or "", "step_reduce": body.get("step_reduce") or ""}
    if isinstance(model, Mapping):
        out["weights"] = dict(model)
    else:
        out["model"] = model or ""
    return out


def _score_request(body: JSON) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(
        inputs=[_input(x) for x in body["inputs"]],
        truncate=bool(body.get("truncate", False)),
        **_source_fields(body),
        advantage=body.get("advantage") or "",
    )


def _detail_json(d: reward_pb2.Detail) -> JSON:
    """A proto Detail as the HTTP ``details[i]``: only the fields the server set."""
    out: JSON = {
        "tokens": d.tokens,
        "truncated": d.truncated,
        "objectives": dict(d.objectives) or None,
        "status": d.status or "ok",
        "mask": d.mask,
    }
    for key in ("raw", "mean", "std", "min", "conservative", "advantage"):
        if d.HasField(key):
            out[key] = getattr(d, key)
    if d.members or d.HasField("mean"):
        out["members"] = dict(d.members)
    if d.components:
        out["components"] = dict(d.components)
    if d.step_scores:
        out["step_scores"] = list(d.step_scores)
    if d.extras_json:
        out["extras"] = json.loads(d.extras_json)
    if d.error:
        out["error"] = d.error
    return out


def _score_json(r: reward_pb2.ScoreResponse) -> JSON:
    details = [_detail_json(d) for d in r.details]
    return {
        "model": r.model,
        # A masked score travels as NaN (proto3 has no null): None here, as over HTTP.
        "scores": [None if d["mask"] else s for s, d in zip(r.scores, details, strict=True)],
        "details": details,
        "usage": {"prompt_tokens": r.usage.prompt_tokens},
    }


def _compare_request(body: JSON) -> reward_pb2.CompareRequest:
    return reward_pb2.CompareRequest(
        pairs=[reward_pb2.Pair(prompt=p["prompt"], a=p["a"], b=p["b"]) for p in body["pairs"]],
        truncate=bool(body.get("truncate", False)),
        **_source_fields(body),
    )


def _compare_json(r: reward_pb2.CompareResponse) -> JSON:
    return {"model": r.model, "probabilities": list(r.probabilities), "margins": list(r.margins)}


def _models_json(r: reward_pb2.ListModelsResponse) -> JSON:
    cards = [_card_json(m) for m in r.models]
    return {"object": "list", "data": cards}


def _card_json(m: reward_pb2.ModelCard) -> JSON:
    """The card as /v1/models shows it (``card_json``), else from the message's fields."""
    if m.card_json:
        card: JSON = json.loads(m.card_json)
        return card
    return _fields_card(m)


def _fields_card(m: reward_pb2.ModelCard) -> JSON:
    return {
        "id": m.id,
        "kind": m.kind or "model",
        "architecture": m.architecture,
        "model_type": m.model_type,
        "max_input_tokens": m.max_input_tokens,
        "dtype": m.dtype,
        "device": m.device,
        "head": m.head,
        "objectives": list(m.objectives),
        "batch_strategy": m.batch_strategy,
        "chat_template": m.chat_template,
        "kernels": m.kernels,
    }


# --- generation (rewardserve.v1.GenerationService) ------------------------------------------------

_SAMPLING_OPTIONAL = ("n", "max_tokens", "temperature", "top_p", "top_k", "seed")
_SAMPLING_FLAGS = ("logprobs", "top_logprobs", "ignore_eos")
_GENERATE_KEYS = {"model", "prompts", "messages", "stop", *_SAMPLING_OPTIONAL, *_SAMPLING_FLAGS}
_ROLLOUT_KEYS = _GENERATE_KEYS | {"generator", "truncate", "advantages", "eps"}


def _prompts(body: JSON, keys: set[str]) -> dict[str, Any]:
    """The prompts and sampling fields of a /v1/generate-style body as proto fields."""
    unknown = set(body) - keys
    if unknown:
        raise TypeError(f"{sorted(unknown)} cannot be sent over gRPC (GenerationService has no such field)")
    sampling = generation_pb2.SamplingParams(
        **{k: body[k] for k in _SAMPLING_OPTIONAL if body.get(k) is not None},
        **{k: body[k] for k in _SAMPLING_FLAGS if k in body},
    )
    stop = body.get("stop")
    if stop is not None:
        sampling.stop.extend([stop] if isinstance(stop, str) else stop)
    fields: dict[str, Any] = {"sampling": sampling}
    if "messages" in body:
        fields["messages"] = [
            generation_pb2.Conversation(
                messages=[reward_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in chat]
            )
            for chat in body["messages"]
        ]
    else:
        fields["prompts"] = body["prompts"]
    return fields


def _generate_request(body: JSON) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(model=body.get("model") or "", **_prompts(body, _GENERATE_KEYS))


def _rollout_request(body: JSON) -> generation_pb2.RolloutRequest:
    request = generation_pb2.RolloutRequest(
        model=body.get("model") or "",
        generator=body.get("generator") or "",
        truncate=bool(body.get("truncate", False)),
        advantages=bool(body.get("advantages", False)),
        **_prompts(body, _ROLLOUT_KEYS),
    )
    if body.get("eps") is not None:
        request.eps = body["eps"]
    return request


def _sample_json(s: Any) -> JSON:
    """A proto Sample as the HTTP API writes it (None where HTTP has null)."""
    return {
        "index": s.index,
        "text": s.text,
        "token_ids": list(s.token_ids),
        "cumulative_logprob": s.cumulative_logprob if s.HasField("cumulative_logprob") else None,
        "logprobs": list(s.logprobs) if s.logprobs else None,
        "top_logprobs": [{str(t): lp for t, lp in step.logprobs.items()} for step in s.top_logprobs] or None,
        "finish_reason": s.finish_reason or None,
    }


def _generate_json(r: generation_pb2.GenerateResponse) -> JSON:
    return {
        "model": r.model,
        "weights_version": r.weights_version,
        "results": [
            {"prompt_tokens": p.prompt_tokens, "samples": [_sample_json(x) for x in p.samples]}
            for p in r.results
        ],
        "usage": {"prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens},
    }


def _rollout_json(r: generation_pb2.RolloutResponse) -> JSON:
    # A masked reward travels as 0.0 with mask set: None here, as over HTTP (and no group
    # statistics when every sample of the group is masked).
    groups = [
        {
            "prompt_tokens": g.prompt_tokens,
            "mean": g.mean if not all(x.mask for x in g.samples) else None,
            "std": g.std if not all(x.mask for x in g.samples) else None,
            "samples": [
                {
                    **_sample_json(x.sample),
                    "reward": None if x.mask else x.reward,
                    "mask": x.mask,
                    "advantage": x.advantage if x.HasField("advantage") else None,
                }
                for x in g.samples
            ],
        }
        for g in r.groups
    ]
    usage = r.usage
    return {
        "model": r.model,
        "generator": r.generator,
        "weights_version": r.weights_version,
        "groups": groups,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "reward_tokens": usage.reward_tokens,
        },
    }


# op -> (service, stub method name, JSON -> request, response -> JSON)
_OPS: dict[str, tuple[str, str, Any, Any]] = {
    "score": ("reward", "Score", _score_request, _score_json),
    "compare": ("reward", "Compare", _compare_request, _compare_json),
    "models": ("reward", "ListModels", lambda _: reward_pb2.ListModelsRequest(), _models_json),
    "generate": ("generation", "Generate", _generate_request, _generate_json),
    "rollout": ("generation", "Rollout", _rollout_request, _rollout_json),
}


def _stubs(channel: Any) -> dict[str, Any]:
    return {
        "reward": reward_pb2_grpc.RewardServiceStub(channel),  # type: ignore[no-untyped-call]
        "generation": generation_pb2_grpc.GenerationServiceStub(channel),  # type: ignore[no-untyped-call]
    }


def _target(url: str) -> tuple[str, bool]:
    """``grpc://host:port`` -> ("host:port", secure=False); ``grpcs://`` is TLS."""
    scheme, _, rest = url.partition("://")
    return rest.rstrip("/"), scheme == "grpcs"


def _credentials(tls: TlsFiles | None) -> grpc.ChannelCredentials:
    if tls is None:
        return grpc.ssl_channel_credentials()
    ca, key, cert = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _metadata(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in (headers or {}).items())


class GrpcTransport:
    """Blocking gRPC to one server (a ``grpc.Channel`` is thread-safe)."""

    def __init__(
        self, url: str, *, headers: Mapping[str, str] | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.url = url.rstrip("/")
        target, secure = _target(self.url)
        self._channel = (
            grpc.secure_channel(target, _credentials(tls), options=CHANNEL_OPTIONS)
            if secure
            else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        )
        self._stubs = _stubs(self._channel)
        self._metadata = _metadata(headers)

    def call(self, op: str, body: JSON | None, timeout: float) -> JSON:
        service, method, to_request, to_json = _OPS[op]
        stub = getattr(self._stubs[service], method)
        try:
            response = stub(to_request(body), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise rpc_error(self.url, exc) from exc
        result: JSON = to_json(response)
        return result

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcTransport:
    """Non-blocking gRPC to one server. The ``grpc.aio`` channel is created on first use, inside
    the event loop that will drive it (aio channels belong to the loop they are made in)."""

    def __init__(
        self, url: str, *, headers: Mapping[str, str] | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] | None = None
        self._metadata = _metadata(headers)
        self._tls = tls

    def _ensure(self) -> dict[str, Any]:
        if self._stubs is None:
            target, secure = _target(self.url)
            self._channel = (
                grpc.aio.secure_channel(target, _credentials(self._tls), options=CHANNEL_OPTIONS)
                if secure
                else grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            )
            self._stubs = _stubs(self._channel)
        return self._stubs

    async def call(self, op: str, body: JSON | None, timeout: float) -> JSON:
        service, method, to_request, to_json = _OPS[op]
        stub = getattr(self._ensure()[service], method)
        try:
            response = await stub(to_request(body), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise rpc_error(self.url, exc) from exc
        result: JSON = to_json(response)
        return result

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stubs = None
