"""Plain data passed between the transports, the scoring service and the engine (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "timeout", "error", "parse_failed"]
Reduce = Literal["mean", "min", "conservative"]
StepReduce = Literal["min", "last", "mean", "prod"]


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class ScoreInput:
    """One thing to score: a prompt/response pair, a conversation, or raw text (exactly one).

    ``steps`` is a process reward model's input: the reasoning steps of the assistant turn (with a
    ``prompt``, or after ``messages`` that hold the conversation so far).
    """

    prompt: str | None = None
    response: str | None = None
    messages: tuple[Message, ...] | None = None
    text: str | None = None
    steps: tuple[str, ...] | None = None
    # Issue 15: what reward functions and judges check the response against (any JSON: a reference
    # answer, test cases, ...), free-form context (verl's data_source / extra_info), and the group
    # (one prompt's samples) that advantages are computed within. Reward models ignore all three.
    label: Any = None
    metadata: Any = None
    group: str | None = None


@dataclass(frozen=True)
class Encoded:
    """A tokenized input, ready for the batcher."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class ScoreOutput:
    """The reward of one input. ``values`` holds every head output (one per objective)."""

    score: float
    values: tuple[float, ...]
    tokens: int
    truncated: bool
    step_scores: tuple[float, ...] | None = None  # process reward models: P(good) of each step
    status: Status = "ok"  # bulk against a server: a masked input (score NaN, not a reward)


@dataclass(frozen=True)
class ModelInfo:
    """What /v1/models reports about a served model."""

    name: str
    architecture: str
    model_type: str
    max_input_tokens: int
    dtype: str
    device: str
    head: str  # "scalar" | "multi_objective"
    objectives: tuple[str, ...] = field(default_factory=tuple)
    batch_strategy: str = "sequential"
    has_chat_template: bool = False
    kernels: str = "transformers"

    def card(self) -> dict[str, Any]:
        """What both transports report for this model (HTTP /v1/models, gRPC ListModels)."""
        return {
            "id": self.name,
            "architecture": self.architecture,
            "model_type": self.model_type,
            "max_input_tokens": self.max_input_tokens,
            "dtype": self.dtype,
            "device": self.device,
            "head": self.head,
            "objectives": list(self.objectives),
            "batch_strategy": self.batch_strategy,
            "chat_template": self.has_chat_template,
            "kernels": self.kernels,
        }


@dataclass(frozen=True)
class ScoreOptions:
    """Per-request options every reward source accepts (a source ignores those not meant for it)."""

    truncate: bool = False
    reduce: Reduce | None = None  # ensembles: what `score` holds (None: the ensemble's configured one)
    step_reduce: StepReduce | None = None  # PRMs: steps -> score (None: the model's configured one)
    deadline: float | None = None  # time.monotonic() by which the call must finish; None: the default


@dataclass(frozen=True)
class RewardResult:
    """One input's answer from any reward source (model, PRM, ensemble, composite, function, judge).

    ``score`` is None exactly when ``status`` is not "ok": a failed input is masked, never a silent 0.
    Only the fields a source sets appear in ``details()``.
    """

    score: float | None
    status: Status = "ok"
    tokens: int = 0
    truncated: bool = False
    values: tuple[float, ...] = ()  # every head output
    objectives: dict[str, float] | None = None  # multi-objective heads: objective -> value
    raw: float | None = None  # the score before normalization (set only when normalized)
    members: dict[str, float | None] | None = None  # ensembles: member -> its reward
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    conservative: float | None = None
    components: dict[str, float | None] | None = None  # composites: component -> its reward
    step_scores: tuple[float, ...] | None = None  # PRMs
    extras: dict[str, Any] | None = None  # reward functions' extra fields
    error: str | None = None  # why, when status is not "ok"
    advantage: float | None = None  # set by apply_advantages when a request asks for one

    @property
    def mask(self) -> bool:
        return self.status != "ok"

    def details(self) -> dict[str, Any]:
        """The JSON ``details[i]`` of a scoring answer: tokens, truncated, status and mask always, the
        rest if set (``extras``: a reward function's or judge's extra fields)."""
        # status and mask always: a trainer tells a real 0 from a failure without knowing the kind.
        out: dict[str, Any] = {
            "tokens": self.tokens,
            "truncated": self.truncated,
            "status": self.status,
            "mask": self.mask,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.objectives is not None:
            out["objectives"] = dict(self.objectives)
        if self.raw is not None:
            out["raw"] = self.raw
        if self.members is not None:
            out["members"] = dict(self.members)
            out.update(mean=self.mean, std=self.std, min=self.min, conservative=self.conservative)
        if self.components is not None:
            out["components"] = dict(self.components)
        if self.step_scores is not None:
            out["step_scores"] = list(self.step_scores)
        if self.extras:
            out["extras"] = dict(self.extras)
        if self.advantage is not None:
            out["advantage"] = self.advantage
        return out
