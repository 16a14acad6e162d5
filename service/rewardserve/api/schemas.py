"""HTTP request/response bodies (the wire contracts in ARCHITECTURE.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rewardserve.generation.types import GeneratorInfo
from rewardserve.scoring.advantages import Advantage
from rewardserve.scoring.types import Message, RewardResult, ScoreInput


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: str = Field(min_length=1, max_length=64)
    content: str


class InputIn(BaseModel):
    """One input: {prompt, response} | {messages} | {text}; for a process reward model also
    {prompt, steps} or {messages, steps} (the steps are the assistant turn after the messages). Each
    with an optional ``label`` (any JSON: what reward functions and judges check the response
    against), ``metadata`` (any JSON) and ``group`` (advantages are computed within a group)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str | None = None
    response: str | None = None
    messages: list[MessageIn] | None = None
    text: str | None = None
    steps: list[str] | None = None
    label: Any = None
    metadata: Any = None
    group: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _one_kind(self) -> InputIn:
        if self.steps is not None:
            if self.response is not None or self.text is not None:
                raise ValueError('"steps" are the response: give them with "prompt" or "messages" only')
            if (self.prompt is None) == (self.messages is None):
                raise ValueError('give "steps" with exactly one of "prompt" or "messages"')
            if self.messages is not None and not self.messages:
                raise ValueError('"messages" must not be empty')
            return self
        kinds = [
            self.prompt is not None or self.response is not None,
            self.messages is not None,
            self.text is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError('give exactly one of {"prompt","response"}, {"messages"} or {"text"}')
        if kinds[0] and (self.prompt is None or self.response is None):
            raise ValueError('"prompt" and "response" go together: give both')
        if self.messages is not None and not self.messages:
            raise ValueError('"messages" must not be empty')
        return self

    def to_input(self) -> ScoreInput:
        steps = tuple(self.steps) if self.steps is not None else None
        extra = {"label": self.label, "metadata": self.metadata, "group": self.group, "steps": steps}
        if self.messages is not None:
            return ScoreInput(messages=tuple(Message(m.role, m.content) for m in self.messages), **extra)
        return ScoreInput(prompt=self.prompt, response=self.response, text=self.text, **extra)


# What "model" may hold: a served name, or ad hoc composite weights {"helpful": 1.0, "safety": 0.5}.
ModelRef = str | dict[str, float] | None
ReduceIn = Literal["mean", "min", "conservative"]
StepReduceIn = Literal["min", "last", "mean", "prod"]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelRef = None
    inputs: list[InputIn]
    truncate: bool = False
    reduce: ReduceIn | None = None  # ensembles: what `scores` holds (default: the ensemble's)
    step_reduce: StepReduceIn | None = None  # process reward models: steps -> score (default: min)
    advantage: Advantage | None = None  # add details[i].advantage within each input's group


class Detail(BaseModel):
    """``details[i]``: tokens, truncated, status and mask always (objectives null for a scalar head);
    every other field ``RewardResult.details()`` sets (members, mean, std, min, conservative,
    components, raw, step_scores, extras, advantage, error, ...) passes through as it is, whatever the
    source's kind."""

    model_config = ConfigDict(extra="allow")
    tokens: int
    truncated: bool
    objectives: dict[str, float] | None = None
    status: Literal["ok", "timeout", "error", "parse_failed"] = "ok"
    mask: bool = False


class Usage(BaseModel):
    prompt_tokens: int


class ScoreResponse(BaseModel):
    model: str
    scores: list[float | None]  # None exactly where details[i].mask: never a silent 0
    details: list[Detail]
    usage: Usage

    @classmethod
    def build(cls, model: str, results: list[RewardResult]) -> ScoreResponse:
        return cls(
            model=model,
            scores=[r.score for r in results],
            details=[Detail(**r.details()) for r in results],
            usage=Usage(prompt_tokens=sum(r.tokens for r in results)),
        )


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward body. ``query`` is the full rendered prompt+response text."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: str | None = None  # a served name; /get_reward/{name} says the same for clients without it
    query: list[str] = Field(default_factory=list)
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class GetRewardResponse(BaseModel):
    """OpenRLHF needs floats: a masked reward is 0.0 here, with ``extra_logs["mask"]`` 1.0 for it."""

    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class RewardRequest(BaseModel):
    """slime's remote reward call (``--rm-url``): one sample. ``prompt`` is text or chat messages."""

    model_config = ConfigDict(extra="allow")
    prompt: str | list[MessageIn]
    response: str
    label: Any = None
    metadata: Any = None

    def to_input(self) -> ScoreInput:
        if isinstance(self.prompt, str):
            return ScoreInput(
                prompt=self.prompt, response=self.response, label=self.label, metadata=self.metadata
            )
        turns = (*(Message(m.role, m.content) for m in self.prompt), Message("assistant", self.response))
        return ScoreInput(messages=turns, label=self.label, metadata=self.metadata)


def reward_answer(r: RewardResult) -> dict[str, Any]:
    """slime reads ``reward`` (``--reward-key reward``); the rest is for logs: status, mask, the
    entry's extras, components."""
    out: dict[str, Any] = {"reward": r.score, "status": r.status, "mask": r.mask}
    if r.error is not None:
        out["error"] = r.error
    if r.components is not None:
        out["components"] = dict(r.components)
    for key, value in (r.extras or {}).items():
        out.setdefault(key, value)
    return out


class ModelCard(BaseModel):
    """A registry entry (``RewardSource.card()``): id and kind always; a model adds architecture,
    dtype, device, head, objectives, memory_bytes, normalize...; an ensemble its members; a composite
    its weights. Passed through as the source describes itself."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "model"
    kind: str

    @classmethod
    def of(cls, card: dict[str, Any]) -> ModelCard:
        return cls(**card)


class GeneratorCard(BaseModel):
    """The policy served by /v1/generate and /v1/rollout (listed after the reward models)."""

    id: str
    object: str = "model"
    kind: str = "generator"
    architecture: str
    model_type: str
    max_model_len: int
    dtype: str
    device: str
    tensor_parallel_size: int
    weights_version: int
    chat_template: bool

    @classmethod
    def of(cls, info: GeneratorInfo) -> GeneratorCard:
        return cls(
            id=info.name,
            architecture=info.architecture,
            model_type=info.model_type,
            max_model_len=info.max_model_len,
            dtype=info.dtype,
            device=info.device,
            tensor_parallel_size=info.tensor_parallel_size,
            weights_version=info.weights_version,
            chat_template=info.chat_template,
        )


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard | GeneratorCard]


class PairIn(BaseModel):
    """One preference pair: two responses to the same prompt."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str
    a: str
    b: str

    def to_inputs(self) -> tuple[ScoreInput, ScoreInput]:
        a = ScoreInput(prompt=self.prompt, response=self.a)
        return a, ScoreInput(prompt=self.prompt, response=self.b)


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelRef = None
    pairs: list[PairIn]
    truncate: bool = False
    reduce: ReduceIn | None = None
    step_reduce: StepReduceIn | None = None


class CompareResponse(BaseModel):
    """``probabilities[i]`` = P(a preferred over b) = sigmoid(``margins[i]``), ``margins[i]`` = r_a - r_b."""

    model: str
    probabilities: list[float | None]  # None where either side is masked
    margins: list[float | None]


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one short line ("loc: message; ..."), for bodies validated outside FastAPI
    (gRPC inputs, KServe JSON)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"
