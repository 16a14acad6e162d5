"""LLM judges: a reward from a language model reading the prompt and the response (kind "judge").

Config (``judges:`` in the YAML registry file)::

    judges:
      - name: judge
        engine: generator           # the co-served vLLM generator; or `path: DIR` for an engine of its own
        template: "Rate the answer from 1 to 5.\\nQuestion: {{ prompt }}\\nAnswer: {{ response }}\\nRating:"
        choices: {"1": 1, "2": 2, "3": 3, "4": 4, "5": 5}   # or `pattern:` (below)

The template (Jinja; ``prompt``, ``response``, ``label``, ``metadata``; pairwise judges get ``a`` and
``b`` instead of ``response``) is rendered and sent as the user turn through the judge model's chat
template with the generation prompt.

- ``choices``: each choice text must be ONE token of the judge's tokenizer (checked at start-up). The
  engine computes one next token with the log-probabilities of exactly the choice tokens (vLLM's
  ``logprob_token_ids``, taken from the raw logits before any sampling processors); the score is the
  expected value of the choices under that distribution renormalized over the choice tokens, i.e.
  ``sum_i v_i softmax(logits[choice_ids])_i`` — what a plain transformers forward of the same prompt
  gives. Extra field ``probs``: each choice's renormalized probability.
- ``pattern``: the judge generates greedily (``max_tokens``) and the first capture group of the
  regular expression (``re.search``) is the score; no match, or a group that is not a number, is
  status ``parse_failed``. Extra field ``judgement``: the generated text (truncated).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rewardserve.config import Settings
from rewardserve.errors import ConfigError, RewardServeError
from rewardserve.generation.service import GenerationService, start_generation
from rewardserve.metrics import Metrics
from rewardserve.scoring.types import RewardResult, ScoreInput, ScoreOptions
from rewardserve.sources.entry import NAME_PATTERN, Entry, parse_section_entry

if TYPE_CHECKING:
    from rewardserve.sources.entry import BuildContext

KIND = "judge"
_JUDGEMENT_CHARS = 500


class JudgeConfig(BaseModel):
    """One ``judges:`` item."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    engine: Literal["generator"] | None = None
    path: Path | None = None
    template: str = Field(min_length=1)
    choices: dict[str, float] | None = None
    pattern: str | None = None
    pairwise: bool = False
    max_tokens: int = Field(default=64, ge=1, le=32768)  # pattern mode: how long the judge may write

    @model_validator(mode="after")
    def _one_of_each(self) -> JudgeConfig:
        if (self.engine is None) == (self.path is None):
            raise ValueError("give exactly one of `engine: generator` or `path: MODEL_DIR`")
        if (self.choices is None) == (self.pattern is None):
            raise ValueError("give exactly one of `choices: {text: value}` or `pattern: REGEX`")
        if self.choices is not None:
            if len(self.choices) < 2:
                raise ValueError("`choices` needs at least two entries")
            if not all(math.isfinite(v) for v in self.choices.values()):
                raise ValueError("`choices` values must be finite numbers")
        if self.pattern is not None:
            try:
                groups = re.compile(self.pattern).groups
            except re.error as exc:
                raise ValueError(f"`pattern` is not a valid regular expression: {exc}") from None
            if groups < 1:
                raise ValueError("`pattern` needs a capture group around the score, e.g. 'Rating: (\\d+)'")
        return self


_JINJA = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


def template_variables(inp: ScoreInput) -> dict[str, Any]:
    """``prompt`` / ``response`` of one input, as the template sees them. A conversation's prompt is
    its turns before the last assistant turn, one ``role: content`` line each (``messages`` holds
    them as a list too)."""
    if inp.messages is not None:
        msgs = [{"role": m.role, "content": m.content} for m in inp.messages]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError("a conversation must end with the assistant's turn (the response to judge)")
        before = msgs[:-1]
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in before)
        return {"prompt": prompt, "messages": before, "response": msgs[-1]["content"]}
    if inp.text is not None:
        return {"prompt": "", "messages": [], "response": inp.text}
    return {
        "prompt": inp.prompt or "",
        "messages": [{"role": "user", "content": inp.prompt or ""}],
        "response": inp.response or "",
    }


def expected_choice_value(
    logprobs: Mapping[int, float], choices: Sequence[tuple[int, float]]
) -> tuple[float, list[float]]:
    """sum_i v_i p_i with p the softmax of the choice tokens' logprobs (log-sum-exp, stable)."""
    lps = [float(logprobs[token]) for token, _ in choices]
    top = max(lps)
    weights = [math.exp(lp - top) for lp in lps]
    total = math.fsum(weights)
    probs = [w / total for w in weights]
    return math.fsum(p * v for p, (_, v) in zip(probs, choices, strict=True)), probs


def parse_judgement(pattern: re.Pattern[str], text: str) -> float | None:
    """The first capture group of the first match, as a finite float; None when there is none."""
    found = pattern.search(text)
    if found is None or found.group(1) is None:
        return None
    try:
        value = float(found.group(1).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class JudgeSource:
    """A judge on a vLLM engine (the co-served generator, or its own). Pointwise judges score inputs;
    pairwise ones (``pairwise: true``) answer ``compare``."""

    kind = KIND

    def __init__(
        self,
        config: JudgeConfig,
        generation: GenerationService,
        *,
        owns_engine: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.generation = generation
        self.owns_engine = owns_engine
        self.pairwise = config.pairwise  # sources.base.compare hands pairs to ``compare`` when set
        self.metrics = metrics
        try:
            self.template = _JINJA.from_string(config.template)
        except TemplateError as exc:
            raise ConfigError(f"judge {config.name!r}: the template does not compile: {exc}") from None
        self.pattern = re.compile(config.pattern) if config.pattern is not None else None
        # The judge's own tokenizer instance: the engine's is used by its own thread (not thread-safe).
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(generation.engine.path))
        self.choice_tokens: list[tuple[int, float]] = []

    def card(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.name,
            "kind": self.kind,
            "engine": "generator" if not self.owns_engine else "own",
            "mode": "choices" if self.config.choices is not None else "pattern",
            "pairwise": self.config.pairwise,
        }
        if self.config.choices is not None:
            out["choices"] = dict(self.config.choices)
        return out

    async def start(self) -> None:
        """Check the judge model and the choices: a chat template, and one token per choice."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError(
                f"judge {self.name!r}: the judge model has no chat template; use an instruction-tuned model "
                "(the template is sent as the user turn)"
            )
        if self.config.choices is not None:
            self.choice_tokens = choice_token_ids(self.name, self.tokenizer, self.config.choices)

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """An engine of its own is stopped here; the co-served generator belongs to the server."""
        if self.owns_engine:
            if drain and timeout:
                await self.generation.wait_idle(timeout)
            await self.generation.close()

    # ------------------------------------------------------------------ scoring
    async def score(self, inputs: Sequence[ScoreInput], options: ScoreOptions) -> list[RewardResult]:
        if self.config.pairwise:
            raise_pairwise(self.name)
        variables: list[dict[str, Any] | str] = []
        for inp in inputs:
            try:
                variables.append({**template_variables(inp), "label": inp.label, "metadata": inp.metadata})
            except ValueError as exc:
                variables.append(str(exc))
        return await self._judge(variables, options)

    async def compare(
        self, pairs: Sequence[tuple[ScoreInput, ScoreInput]], options: ScoreOptions
    ) -> list[RewardResult]:
        """Pairwise judges: one result per (a, b) pair, the judge's value for the pair (e.g. with
        ``choices: {"A": 1, "B": 0}``, the probability that a is better)."""
        if not self.config.pairwise:
            raise RewardServeError(f"judge {self.name!r} is pointwise; score a and b instead")
        variables: list[dict[str, Any] | str] = []
        for a, b in pairs:
            try:
                va, vb = template_variables(a), template_variables(b)
                variables.append(
                    {
                        "prompt": va["prompt"],
                        "messages": va["messages"],
                        "a": va["response"],
                        "b": vb["response"],
                        "label": a.label if a.label is not None else b.label,
                        "metadata": a.metadata if a.metadata is not None else b.metadata,
                    }
                )
            except ValueError as exc:
                variables.append(str(exc))
        return await self._judge(variables, options)

    async def _judge(
        self, variables: list[dict[str, Any] | str], options: ScoreOptions
    ) -> list[RewardResult]:
        prompts = await asyncio.to_thread(self._encode_all, variables)
        results = list(await asyncio.gather(*(self._one(p, options.deadline) for p in prompts)))
        if self.metrics is not None:
            self.metrics.count_results(self.name, [r.status for r in results])
        return results

    def render(self, variables: Mapping[str, Any]) -> list[int]:
        """The token ids the judge model reads for these template variables."""
        user = self.template.render(**variables)
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_all(self, variables: list[dict[str, Any] | str]) -> list[list[int] | str]:
        out: list[list[int] | str] = []
        for v in variables:
            if isinstance(v, str):
                out.append(v)
                continue
            try:
                out.append(self.render(v))
            except TemplateError as exc:  # e.g. the template uses a variable this input lacks
                out.append(f"the judge template failed for this input: {exc}")
        return out

    async def _one(self, prompt: list[int] | str, deadline: float | None) -> RewardResult:
        if isinstance(prompt, str):
            return RewardResult(None, status="error", error=prompt)
        params = self._params()
        try:
            async with asyncio.timeout(None if deadline is None else max(0.0, deadline - time.monotonic())):
                out = await self.generation.complete(prompt, params)
        except TimeoutError:
            return RewardResult(None, status="timeout", error="the request's deadline passed")
        except RewardServeError as exc:
            if exc.retryable:  # overloaded, draining: the whole call fails, as for a model
                raise
            return RewardResult(None, status="error", error=exc.message)
        completion = out.outputs[0]
        if self.config.choices is not None:
            step = completion.logprobs[0]
            logprobs = {int(t): float(lp.logprob) for t, lp in step.items()}
            score, probs = expected_choice_value(logprobs, self.choice_tokens)
            names = list(self.config.choices)
            return RewardResult(score, extras={"probs": dict(zip(names, probs, strict=True))})
        assert self.pattern is not None
        text = completion.text
        value = parse_judgement(self.pattern, text)
        extras = {"judgement": text[:_JUDGEMENT_CHARS]}
        if value is None:
            return RewardResult(
                None,
                status="parse_failed",
                extras=extras,
                error=f"the judge's answer does not match {self.config.pattern!r} with a number",
            )
        return RewardResult(value, extras=extras)

    def _params(self) -> Any:
        from vllm import SamplingParams

        if self.config.choices is not None:
            # One step; the logprobs of exactly the choice tokens (raw, before sampling processors).
            return SamplingParams(
                max_tokens=1,
                temperature=0.0,
                logprob_token_ids=[t for t, _ in self.choice_tokens],
                detokenize=False,
            )
        return SamplingParams(max_tokens=self.config.max_tokens, temperature=0.0)


def raise_pairwise(name: str) -> None:
    from rewardserve.errors import InputError

    raise InputError(f"judge {name!r} is pairwise: send (a, b) pairs to /v1/compare")


def choice_token_ids(name: str, tokenizer: Any, choices: Mapping[str, float]) -> list[tuple[int, float]]:
    """(token id, value) per choice; a choice that is not exactly one token is a ConfigError."""
    out = []
    for text, value in choices.items():
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ConfigError(
                f"judge {name!r}: choice {text!r} is {len(ids)} tokens {pieces} for the judge's tokenizer; "
                "each choice must be one token (try single characters, or the form with a leading space)"
            )
        out.append((int(ids[0]), float(value)))
    if len({t for t, _ in out}) != len(out):
        raise ConfigError(f"judge {name!r}: two choices are the same token; make them distinct")
    return out


# ---------------------------------------------------------------------- registry hooks
def parse_judge(data: Mapping[str, Any], where: str, base_dir: Path) -> Entry:
    """The ``judges:`` section parser."""
    cfg = parse_section_entry(JudgeConfig, data, where)
    try:
        _JINJA.from_string(cfg.template)
    except TemplateError as exc:
        raise ConfigError(f"{where} {cfg.name!r}: the template does not compile: {exc}") from None
    if cfg.path is not None:
        path = cfg.path if cfg.path.is_absolute() else base_dir / cfg.path
        if not path.is_dir():
            raise ConfigError(f"{where} {cfg.name!r}: judge model directory not found: {path}")
        cfg = cfg.model_copy(update={"path": path})
    return Entry(cfg.name, KIND, where, cfg)


async def build_judge(entry: Entry, ctx: BuildContext) -> JudgeSource:
    """The ``judge`` kind's builder."""
    cfg: JudgeConfig = entry.plan
    if cfg.engine == "generator":
        if ctx.generation is None:
            raise ConfigError(
                f"{entry.where} {cfg.name!r}: engine: generator, but no generator is served; start the "
                "server with --generator PATH, or give the judge `path: MODEL_DIR`"
            )
        source = JudgeSource(cfg, ctx.generation, metrics=ctx.metrics)
    else:
        settings = Settings(
            **{**ctx.settings.model_dump(), "generator": cfg.path, "generator_name": cfg.name}
        )
        metrics = ctx.metrics if ctx.metrics is not None else Metrics()
        generation = await start_generation(settings, metrics)
        try:
            source = JudgeSource(cfg, generation, owns_engine=True, metrics=ctx.metrics)
        except BaseException:
            await generation.close()
            raise
    try:
        await source.start()
    except BaseException:
        await source.close(drain=False)
        raise
    return source
