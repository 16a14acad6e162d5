"""Plain data passed between the transports, the scoring service and the engine (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class ScoreInput:
    """One thing to score: a prompt/response pair, a conversation, or raw text (exactly one)."""

    prompt: str | None = None
    response: str | None = None
    messages: tuple[Message, ...] | None = None
    text: str | None = None


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
