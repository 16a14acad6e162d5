"""Inputs and results of the client, and their wire (HTTP JSON) form.

The HTTP JSON body is the one request/response form inside the client: the gRPC transport converts
it to and from protobuf messages, so everything above the transports is shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypedDict, cast

__all__ = [
    "CompareResult",
    "GenerateResponse",
    "Input",
    "Message",
    "ModelInfo",
    "ModelRef",
    "Pair",
    "RolloutResponse",
    "ScoreDetail",
    "ScoreResult",
]

Message: TypeAlias = Mapping[str, Any]
"""A chat message: ``{"role": ..., "content": ...}`` (other keys are dropped)."""

Input: TypeAlias = str | tuple[str, str] | Mapping[str, Any] | Sequence[Message]
"""One thing to score:

* ``"text"``: raw text, scored as given;
* ``(prompt, response)``: through the reward model's chat template;
* ``[{"role": "user", ...}, {"role": "assistant", ...}]``: a conversation, through the template;
* a wire dict: ``{"prompt", "response"}``, ``{"messages"}`` or ``{"text"}``; for a process reward
  model also ``{"prompt", "steps"}`` or ``{"messages", "steps"}`` (steps: a list of strings); each
  optionally with ``"label"`` (any JSON: what reward functions and judges check against),
  ``"metadata"`` (any JSON) and ``"group"`` (advantages are computed within a group).
"""

ModelRef: TypeAlias = str | Mapping[str, float] | None
"""What to score with: a served name (``client.models()``), ad hoc composite weights
``{"helpful": 1.0, "safety": 0.5}``, or None for the server's default entry."""

Pair: TypeAlias = tuple[str, str, str] | Mapping[str, str]
"""A preference question: ``(prompt, a, b)`` or ``{"prompt", "a", "b"}``; answers P(a ≻ b)."""

_KINDS = ("prompt", "response", "messages", "text", "steps")
_EXTRAS = ("label", "metadata", "group")  # carried beside any kind of input


def message_to_wire(m: Message, where: str) -> dict[str, str]:
    """``{"role", "content"}`` from a chat message. Content given as a list of parts (the OpenAI /
    TRL multimodal form) keeps its text parts; ``None`` content (a tool-call turn) is empty."""
    if not isinstance(m, Mapping) or "role" not in m:
        raise TypeError(f"{where}: a chat message is a mapping with 'role' and 'content', got {m!r:.80}")
    content = m.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, Sequence):
        text = "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    else:
        raise TypeError(f"{where}: message content must be a string, got {type(content).__name__}")
    return {"role": str(m["role"]), "content": text}


def input_to_wire(x: Input, index: int) -> dict[str, Any]:
    """The ``/v1/score`` JSON form of one input (see ``Input``)."""
    where = f"inputs[{index}]"
    if isinstance(x, str):
        return {"text": x}
    if isinstance(x, tuple) and len(x) == 2 and all(isinstance(p, str) for p in x):
        return {"prompt": x[0], "response": x[1]}
    if isinstance(x, Mapping):
        unknown = set(x) - set(_KINDS) - set(_EXTRAS)
        if unknown:
            raise TypeError(
                f"{where}: unknown keys {sorted(unknown)}; use prompt+response, messages or text "
                "(with label, metadata, group)"
            )
        out: dict[str, Any] = {k: x[k] for k in _KINDS if x.get(k) is not None}
        if "messages" in out:
            out["messages"] = [message_to_wire(m, where) for m in out["messages"]]
        if "steps" in out:
            out["steps"] = [str(step) for step in out["steps"]]
            if ("prompt" in out) == ("messages" in out) or "response" in out or "text" in out:
                raise TypeError(f"{where}: give steps with exactly one of prompt or messages")
            return out
        kinds = ("prompt" in out or "response" in out) + ("messages" in out) + ("text" in out)
        if kinds != 1 or (("prompt" in out) != ("response" in out)):
            raise TypeError(f"{where}: give exactly one of prompt+response, messages or text")
        out.update({k: x[k] for k in _EXTRAS if x.get(k) is not None})
        return out
    if isinstance(x, Sequence) and x and all(isinstance(m, Mapping) for m in x):
        return {"messages": [message_to_wire(cast(Message, m), where) for m in x]}
    raise TypeError(
        f"{where}: expected text, a (prompt, response) tuple, a list of chat messages or a dict; "
        f"got {type(x).__name__}"
    )


def pair_to_wire(p: Pair, index: int) -> dict[str, str]:
    if isinstance(p, Mapping):
        try:
            return {"prompt": str(p["prompt"]), "a": str(p["a"]), "b": str(p["b"])}
        except KeyError as exc:
            raise TypeError(f"pairs[{index}]: missing key {exc}; a pair is {{prompt, a, b}}") from None
    if isinstance(p, tuple) and len(p) == 3 and all(isinstance(s, str) for s in p):
        return {"prompt": p[0], "a": p[1], "b": p[2]}
    raise TypeError(f"pairs[{index}]: expected (prompt, a, b) or {{prompt, a, b}}, got {type(p).__name__}")


@dataclass(frozen=True)
class ScoreDetail:
    """``details[i]`` of a scoring answer; fields the scoring entry does not set stay None."""

    tokens: int
    """Tokens the reward model read for this input."""
    truncated: bool
    objectives: dict[str, float] | None = None
    """Every objective of a multi-objective head, by name; None for scalar heads."""
    raw: float | None = None
    """The reward before normalization (normalized entries only)."""
    members: dict[str, float | None] | None = None
    """Ensembles: each member's reward; with mean, std (population), min and conservative."""
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    conservative: float | None = None
    components: dict[str, float | None] | None = None
    """Composites: each component's reward (after its own normalization)."""
    step_scores: list[float] | None = None
    """Process reward models: P(step is good) for each step."""
    status: str = "ok"
    """"ok", or why the input is masked: "timeout" | "error" | "parse_failed"."""
    mask: bool = False
    """True when status is not "ok": the score is None, never a silent 0."""
    extras: dict[str, Any] | None = None
    """A reward function's or judge's extra fields."""
    advantage: float | None = None
    """The input's group advantage, when the call asked for one (None for masked inputs)."""
    error: str | None = None
    """Why the input is masked."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other field the server reported for this input."""

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ScoreDetail:
        def opt(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        def scores(key: str) -> dict[str, float | None] | None:
            v = d.get(key)
            return None if v is None else {str(k): opt_value(x) for k, x in v.items()}

        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            tokens=int(d.get("tokens", 0)),
            truncated=bool(d.get("truncated", False)),
            objectives={str(k): float(v) for k, v in d["objectives"].items()}
            if d.get("objectives")
            else None,
            raw=opt("raw"),
            members=scores("members"),
            mean=opt("mean"),
            std=opt("std"),
            min=opt("min"),
            conservative=opt("conservative"),
            components=scores("components"),
            step_scores=[float(x) for x in d["step_scores"]] if d.get("step_scores") is not None else None,
            status=str(d.get("status") or "ok"),
            mask=bool(d.get("mask", False)),
            extras=dict(d["extras"]) if d.get("extras") else None,
            advantage=opt("advantage"),
            error=None if d.get("error") is None else str(d["error"]),
            extra={k: v for k, v in d.items() if k not in known},
        )


def opt_value(v: Any) -> float | None:
    return None if v is None else float(v)


def score_value(v: Any) -> float | None:
    """A wire score as a float; a masked one (null over HTTP) is None, never a silent 0."""
    return None if v is None else float(v)


@dataclass(frozen=True)
class ScoreResult:
    """A scoring call's answer: ``scores[i]`` belongs to ``inputs[i]``."""

    model: str
    scores: list[float | None]
    """None where ``details[i].mask``: a reward source that failed for that input."""
    details: list[ScoreDetail]
    prompt_tokens: int

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> ScoreResult:
        details = [ScoreDetail.from_wire(d) for d in body.get("details", [])]
        usage = body.get("usage") or {}
        return cls(
            model=str(body.get("model", "")),
            scores=[score_value(s) for s in body["scores"]],
            details=details,
            prompt_tokens=int(usage.get("prompt_tokens", sum(d.tokens for d in details))),
        )

    @classmethod
    def merge(cls, parts: Sequence[ScoreResult]) -> ScoreResult:
        """Chunks' results, in chunk order, as one result."""
        return cls(
            model=parts[0].model if parts else "",
            scores=[s for p in parts for s in p.scores],
            details=[d for p in parts for d in p.details],
            prompt_tokens=sum(p.prompt_tokens for p in parts),
        )


@dataclass(frozen=True)
class CompareResult:
    """``probabilities[i]`` = P(a ≻ b) = sigmoid(``margins[i]``), ``margins[i]`` = r_a - r_b."""

    model: str
    probabilities: list[float | None]
    """None where either side is masked."""
    margins: list[float | None]

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> CompareResult:
        return cls(
            model=str(body.get("model", "")),
            probabilities=[score_value(p) for p in body["probabilities"]],
            margins=[score_value(m) for m in body["margins"]],
        )

    @classmethod
    def merge(cls, parts: Sequence[CompareResult]) -> CompareResult:
        return cls(
            model=parts[0].model if parts else "",
            probabilities=[p for r in parts for p in r.probabilities],
            margins=[m for r in parts for m in r.margins],
        )


def _number(x: Any) -> float | None:
    """A JSON number, or None for null (HTTP) and NaN (gRPC): a masked value."""
    if x is None:
        return None
    value = float(x)
    return None if value != value else value


@dataclass(frozen=True)
class ModelInfo:
    """A served model: a reward source (``kind="reward"``) or the policy generator."""

    id: str
    kind: str
    """"reward" or "generator"."""
    max_tokens: int
    """Longest input (reward model) or prompt + completion (generator)."""
    dtype: str
    device: str
    chat_template: bool
    objectives: tuple[str, ...] = ()
    reward_kind: str | None = None
    """For a reward source, the server's kind of entry: "model", "prm", "ensemble", "composite"..."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other field the server reported (architecture, head, batch strategy, ...)."""

    @classmethod
    def from_wire(cls, card: Mapping[str, Any]) -> ModelInfo:
        kind = str(card.get("kind", "reward"))
        reward_kind = None if kind == "generator" else kind
        if kind != "generator":
            kind = "reward"
        known = {
            "id",
            "object",
            "kind",
            "max_input_tokens",
            "max_model_len",
            "dtype",
            "device",
            "chat_template",
        }
        return cls(
            id=str(card["id"]),
            kind=kind,
            max_tokens=int(card.get("max_input_tokens") or card.get("max_model_len") or 0),
            dtype=str(card.get("dtype", "")),
            device=str(card.get("device", "")),
            chat_template=bool(card.get("chat_template", False)),
            objectives=tuple(card.get("objectives") or ()),
            reward_kind=reward_kind if reward_kind != "reward" else None,
            extra={k: v for k, v in card.items() if k not in known and k != "objectives"},
        )


# --- generation (the server's JSON, typed) ---------------------------------------------------------


class Sample(TypedDict, total=False):
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[float] | None
    top_logprobs: list[dict[str, float]] | None
    finish_reason: str | None


class PromptSamples(TypedDict):
    prompt_tokens: int
    samples: list[Sample]


class GenerateResponse(TypedDict):
    """``/v1/generate``: ``results[i].samples`` are the n samples of ``prompts[i]``."""

    model: str
    weights_version: int
    results: list[PromptSamples]
    usage: dict[str, int]


class RolloutSample(Sample, total=False):
    reward: float | None
    mask: bool
    advantage: float | None


class RolloutGroup(TypedDict):
    prompt_tokens: int
    mean: float | None
    std: float | None
    samples: list[RolloutSample]


class RolloutResponse(TypedDict):
    """``/v1/rollout``: ``groups[i]`` holds the scored samples of ``prompts[i]``."""

    model: str
    generator: str
    weights_version: int
    groups: list[RolloutGroup]
    usage: dict[str, int]
