"""Plain data passed between the transports, the generation service and the vLLM engine (no vllm here)."""

from __future__ import annotations

from dataclasses import dataclass

from rewardserve.scoring.types import Message


@dataclass(frozen=True)
class PromptInput:
    """One prompt: raw text (tokenized as the policy's tokenizer frames it) or a conversation (rendered
    through the policy's chat template with the generation prompt appended). Exactly one is set."""

    text: str | None = None
    messages: tuple[Message, ...] | None = None


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling parameters of one call; every prompt in the call gets ``n`` samples with them."""

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False


@dataclass(frozen=True)
class Sample:
    """One completed sample. ``logprobs[i]`` is the logprob of ``token_ids[i]`` (when asked);
    ``top_logprobs[i]`` maps the most likely token ids at step i to their logprobs."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    cumulative_logprob: float | None
    finish_reason: str | None
    logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[dict[int, float], ...] | None = None


@dataclass(frozen=True)
class PromptResult:
    """The n samples of one prompt, in sample-index order."""

    prompt_tokens: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class GenerateResult:
    """The result of one call, ``results[i]`` for ``prompts[i]``, and the policy weights version that
    produced every sample of it (a reload never lands in the middle of a call)."""

    results: tuple[PromptResult, ...]
    weights_version: int


@dataclass(frozen=True)
class SampleDelta:
    """A streamed piece of one sample: new text and tokens since the last delta of that sample."""

    prompt_index: int
    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    cumulative_logprob: float | None = None
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class GeneratorInfo:
    """What /v1/models reports about the policy."""

    name: str
    model_type: str
    architecture: str
    max_model_len: int
    dtype: str
    device: str
    tensor_parallel_size: int
    weights_version: int
    chat_template: bool
