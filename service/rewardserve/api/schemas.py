"""HTTP request/response bodies (the wire contracts in ARCHITECTURE.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rewardserve.generation.types import GeneratorInfo
from rewardserve.scoring.types import Message, ModelInfo, ScoreInput, ScoreOutput


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: str = Field(min_length=1, max_length=64)
    content: str


class InputIn(BaseModel):
    """One input: {prompt, response} | {messages} | {text}."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str | None = None
    response: str | None = None
    messages: list[MessageIn] | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> InputIn:
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
        if self.messages is not None:
            return ScoreInput(messages=tuple(Message(m.role, m.content) for m in self.messages))
        return ScoreInput(prompt=self.prompt, response=self.response, text=self.text)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    inputs: list[InputIn]
    truncate: bool = False


class Detail(BaseModel):
    tokens: int
    truncated: bool
    objectives: dict[str, float] | None = None


class Usage(BaseModel):
    prompt_tokens: int


class ScoreResponse(BaseModel):
    model: str
    scores: list[float]
    details: list[Detail]
    usage: Usage

    @classmethod
    def build(cls, model: str, outputs: list[ScoreOutput], objectives: tuple[str, ...]) -> ScoreResponse:
        details = [
            Detail(
                tokens=o.tokens,
                truncated=o.truncated,
                objectives=dict(zip(objectives, o.values, strict=True)) if objectives else None,
            )
            for o in outputs
        ]
        return cls(
            model=model,
            scores=[o.score for o in outputs],
            details=details,
            usage=Usage(prompt_tokens=sum(o.tokens for o in outputs)),
        )


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward body. ``query`` is the full rendered prompt+response text."""

    model_config = ConfigDict(extra="allow", strict=True)
    query: list[str] = Field(default_factory=list)
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    architecture: str
    model_type: str
    max_input_tokens: int
    dtype: str
    device: str
    head: str
    objectives: list[str]
    batch_strategy: str
    chat_template: bool
    kernels: str

    @classmethod
    def of(cls, info: ModelInfo) -> ModelCard:
        return cls(**info.card())


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
    model: str | None = None
    pairs: list[PairIn]
    truncate: bool = False


class CompareResponse(BaseModel):
    """``probabilities[i]`` = P(a preferred over b) = sigmoid(``margins[i]``), ``margins[i]`` = r_a - r_b."""

    model: str
    probabilities: list[float]
    margins: list[float]


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one short line ("loc: message; ..."), for bodies validated outside FastAPI
    (gRPC inputs, KServe JSON)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"
