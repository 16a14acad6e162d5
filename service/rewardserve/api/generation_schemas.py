"""HTTP bodies of /v1/generate, /v1/rollout and /v1/generator/weights (docs/generation.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rewardserve.api.schemas import MessageIn
from rewardserve.generation.rollout import RolloutResult
from rewardserve.generation.types import GenerateResult, PromptInput, Sample, SamplingOptions
from rewardserve.scoring.types import Message

_Stop = Annotated[str, Field(min_length=1, max_length=256)]


class GenerateRequest(BaseModel):
    """Prompts (text) or conversations, plus sampling parameters shared by all of them."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    """Generator name (optional; the served policy)."""
    prompts: list[str] | None = None
    messages: list[Annotated[list[MessageIn], Field(min_length=1)]] | None = None
    n: int = Field(default=1, ge=1, le=1024)
    max_tokens: int = Field(default=16, ge=1, le=1_048_576)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=1_000_000)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[_Stop] | _Stop | None = Field(default=None)
    logprobs: bool = False
    """Return each sampled token's logprob (``cumulative_logprob`` is always returned)."""
    top_logprobs: int = Field(default=0, ge=0, le=20)
    """Also return the k most likely tokens at each step (implies ``logprobs``)."""
    ignore_eos: bool = False
    stream: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> GenerateRequest:
        if (self.prompts is None) == (self.messages is None):
            raise ValueError('give exactly one of "prompts" (list of strings) or "messages" (list of chats)')
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError('"stop" holds at most 16 strings')
        return self

    def to_prompts(self) -> list[PromptInput]:
        if self.messages is not None:
            return [
                PromptInput(messages=tuple(Message(m.role, m.content) for m in chat))
                for chat in self.messages
            ]
        return [PromptInput(text=p) for p in self.prompts or []]

    def to_options(self) -> SamplingOptions:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingOptions(
            n=self.n,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=stop,
            logprobs=self.logprobs or self.top_logprobs > 0,
            top_logprobs=self.top_logprobs,
            ignore_eos=self.ignore_eos,
        )


class RolloutRequest(GenerateRequest):
    """A generate request whose samples are scored: ``model`` names the REWARD model here."""

    model: str | None = None
    """Reward model name (optional; the served one)."""
    generator: str | None = None
    """Generator name (optional; the served policy)."""
    truncate: bool = False
    """Truncate prompt+sample pairs too long for the reward model instead of failing (422)."""
    advantages: bool = False
    """Add GRPO advantages ``(r - mean) / (std + eps)`` per group."""
    eps: float = Field(default=1e-6, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _no_stream(self) -> RolloutRequest:
        if self.stream:
            raise ValueError('rollouts are scored as a whole and cannot stream; use "stream": false')
        return self


class SampleOut(BaseModel):
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    finish_reason: str | None

    @classmethod
    def of(cls, s: Sample) -> SampleOut:
        return cls(
            index=s.index,
            text=s.text,
            token_ids=list(s.token_ids),
            cumulative_logprob=s.cumulative_logprob,
            logprobs=list(s.logprobs) if s.logprobs is not None else None,
            top_logprobs=(
                [{str(t): lp for t, lp in step.items()} for step in s.top_logprobs]
                if s.top_logprobs is not None
                else None
            ),
            finish_reason=s.finish_reason,
        )


class PromptOut(BaseModel):
    prompt_tokens: int
    samples: list[SampleOut]


class GenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    model: str
    weights_version: int
    results: list[PromptOut]
    usage: GenUsage

    @classmethod
    def build(cls, model: str, r: GenerateResult) -> GenerateResponse:
        return cls(
            model=model,
            weights_version=r.weights_version,
            results=[
                PromptOut(prompt_tokens=p.prompt_tokens, samples=[SampleOut.of(s) for s in p.samples])
                for p in r.results
            ],
            usage=GenUsage(
                prompt_tokens=sum(p.prompt_tokens for p in r.results),
                completion_tokens=sum(len(s.token_ids) for p in r.results for s in p.samples),
            ),
        )


class RolloutSampleOut(SampleOut):
    reward: float | None  # None: masked (the reward source failed for this sample); see ``mask``
    mask: bool = False
    advantage: float | None = None


class RolloutGroupOut(BaseModel):
    prompt_tokens: int
    mean: float | None  # over the group's unmasked samples; None when all are masked
    std: float | None
    samples: list[RolloutSampleOut]


class RolloutUsage(GenUsage):
    reward_tokens: int


class RolloutResponse(BaseModel):
    model: str
    generator: str
    weights_version: int
    groups: list[RolloutGroupOut]
    usage: RolloutUsage

    @classmethod
    def build(cls, generator: str, r: RolloutResult) -> RolloutResponse:
        groups = [
            RolloutGroupOut(
                prompt_tokens=g.prompt_tokens,
                mean=g.mean,
                std=g.std,
                samples=[
                    RolloutSampleOut(
                        **SampleOut.of(s.sample).model_dump(),
                        reward=s.reward,
                        mask=s.reward is None,
                        advantage=s.advantage,
                    )
                    for s in g.samples
                ],
            )
            for g in r.groups
        ]
        return cls(
            model=r.reward_model,
            generator=generator,
            weights_version=r.weights_version,
            groups=groups,
            usage=RolloutUsage(
                prompt_tokens=sum(g.prompt_tokens for g in r.groups),
                completion_tokens=sum(len(s.sample.token_ids) for g in r.groups for s in g.samples),
                reward_tokens=r.reward_tokens,
            ),
        )


class WeightsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    path: str = Field(min_length=1, max_length=4096)
    """Checkpoint directory on the server (safetensors, same architecture as the served policy)."""


class WeightsResponse(BaseModel):
    model: str
    weights_version: int
