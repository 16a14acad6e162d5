"""ScoringService: the one object both transports call to score inputs.

It owns the engine, the batcher and the tokenizer thread. Order of work for a call: cheap admission
check (no tokenizing for a request that will be refused) -> tokenize in the tokenizer thread ->
batcher (token budget, deadlines) -> engine. Counting in-flight calls lets a drain wait for them.

Admission is taken at arrival, on a token count estimated from the characters (``estimate_tokens``),
and held until the answer, so calls waiting for the tokenizer count against the bounds too. Every
result is checked: a NaN or infinite reward fails its own request (``NonFiniteReward``, HTTP 500 /
INTERNAL), never its batch mates, and never reaches JSON (which cannot carry it).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from rewardserve.config import Settings
from rewardserve.errors import InputError, ModelNotFound, NonFiniteReward
from rewardserve.inflight import InFlight
from rewardserve.metrics import Metrics
from rewardserve.naming import setting_name
from rewardserve.scoring.batcher import Batcher, BatchStats
from rewardserve.scoring.engine import Prepared
from rewardserve.scoring.types import Encoded, ModelInfo, ScoreInput, ScoreOutput


def sigmoid(x: float) -> float:
    """Logistic function without overflow for large |x| (math.exp(710) raises)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class Comparison:
    """One pair's preference: ``margin`` = r_a - r_b, ``probability`` = sigmoid(margin) = P(a > b)."""

    margin: float
    probability: float
    a: ScoreOutput
    b: ScoreOutput

    @classmethod
    def of(cls, a: ScoreOutput, b: ScoreOutput) -> Comparison:
        margin = a.score - b.score
        return cls(margin, sigmoid(margin), a, b)


class ScoringModel(Protocol):
    """What the service needs of a model: ``RewardEngine`` in production; tests pass a wrapper
    (``rewardserve.testing.gated.GatedModel``) to hold or break ``run``."""

    @property
    def info(self) -> ModelInfo: ...
    @property
    def workers(self) -> int: ...
    @property
    def max_input_tokens(self) -> int: ...
    def encode(self, inp: ScoreInput, *, truncate: bool) -> Encoded: ...
    def batch_cost(self, lengths: Sequence[int]) -> int: ...
    def prepare(self, items: list[Encoded]) -> Prepared: ...
    def run(self, batch: Prepared) -> list[ScoreOutput]: ...


class ScoringService:
    """Scores inputs on one reward model through a token-budget batcher."""

    def __init__(
        self,
        engine: ScoringModel,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.settings = settings
        self.name = engine.info.name
        self.batcher: Batcher[Encoded, Prepared, ScoreOutput] = Batcher(
            prepare=engine.prepare,
            run=engine.run,
            batch_cost=engine.batch_cost,
            max_batch_tokens=max(settings.max_batch_tokens, engine.batch_cost([engine.max_input_tokens])),
            max_batch_rows=settings.max_batch_rows,
            max_queued_requests=settings.max_queued_requests,
            max_queued_tokens=settings.max_queued_tokens,
            on_batch=self._on_batch,
            name=self.name,
            workers=engine.workers,
            max_queue_wait_s=settings.max_queue_wait_s,
            check_result=_check_finite,
        )
        # One thread: HF fast tokenizers raise "Already borrowed" when two threads use one at once.
        self._tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardserve-tokenize")
        self._calls = InFlight()
        info = engine.info
        self.metrics.model_info.labels(
            info.name,
            info.architecture,
            info.dtype,
            info.device,
            info.head,
            info.batch_strategy,
            info.kernels,
        ).set(1)
        batcher = self.batcher
        self.metrics.queue_probes[self.name] = lambda: (batcher.queued_requests, batcher.queued_tokens)

    async def start(self) -> None:
        await self.batcher.start()

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        await self.batcher.close(drain=drain, timeout=timeout)
        self._tokenize.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        return self._calls.count

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight (drain). True if idle before the timeout."""
        return await self._calls.wait_idle(timeout)

    @property
    def info(self) -> ModelInfo:
        """What the served model is (name, architecture, head, objectives, limits)."""
        return self.engine.info

    @property
    def objectives(self) -> tuple[str, ...]:
        """Names of the reward head's outputs (one for a scalar reward model)."""
        return self.info.objectives

    @property
    def workers(self) -> int:
        """Batches computed at once (one compute thread each)."""
        return self.engine.workers

    def models(self) -> list[ModelInfo]:
        return [self.engine.info]

    def check_model(self, model: str | None) -> None:
        if model not in (None, "", self.name):
            raise ModelNotFound(f"model {model!r} is not served here; available: [{self.name!r}]")

    async def score(
        self,
        inputs: Sequence[ScoreInput],
        *,
        model: str | None = None,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> list[ScoreOutput]:
        """Score inputs; results in input order. Raises InputError, Overloaded, DeadlineExceeded."""
        self.check_model(model)
        if len(inputs) > self.settings.max_inputs_per_request:
            raise InputError(
                f"{len(inputs)} inputs in one request; the limit is {self.settings.max_inputs_per_request}. "
                "Split the request."
            )
        if not inputs:
            return []
        self._check_sizes(inputs, truncate)
        deadline = time.monotonic() + (timeout if timeout is not None else self.settings.request_timeout_s)
        estimate = sum(self.estimate_tokens(inp) for inp in inputs)
        with self.batcher.admit(estimate) as admission, self._calls.track():
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            encoded = await loop.run_in_executor(self._tokenize, self._encode_all, list(inputs), truncate)
            self.metrics.tokenize_duration.labels(self.name).observe(time.perf_counter() - t0)
            tokens = [e.n_tokens for e in encoded]
            try:
                outputs = await self.batcher.submit(encoded, tokens, deadline=deadline, admission=admission)
            except NonFiniteReward:
                self.metrics.rejected.labels("non_finite").inc()
                raise
        self._observe(inputs, outputs)
        return outputs

    async def compare(
        self,
        pairs: Sequence[tuple[ScoreInput, ScoreInput]],
        *,
        model: str | None = None,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> list[Comparison]:
        """Bradley-Terry preference of ``a`` over ``b`` for each pair. Both sides of every pair go
        in one scoring call, so they are batched (and admitted, and timed out) together."""
        flat = [side for pair in pairs for side in pair]
        try:
            outputs = await self.score(flat, model=model, truncate=truncate, timeout=timeout)
        except InputError as exc:
            if exc.index is None:
                raise
            detail = str(exc).removeprefix(f"inputs[{exc.index}]: ")
            raise InputError(f"pairs[{exc.index // 2}].{'ab'[exc.index % 2]}: {detail}") from None
        return [Comparison.of(a, b) for a, b in zip(outputs[::2], outputs[1::2], strict=True)]

    def max_input_chars(self, truncate: bool) -> int:
        """Longest text accepted per input, before tokenizing (README "Security": bounded input)."""
        cap = self.settings.input_chars_per_token * self.engine.max_input_tokens
        return cap * 4 if truncate else cap

    def _check_sizes(self, inputs: Sequence[ScoreInput], truncate: bool) -> None:
        """Refuse a text no tokenizer call could accept, before any tokenizing: a 50 MB string took
        minutes and gigabytes to tokenize only to be refused as too long."""
        limit = self.max_input_chars(truncate)
        for i, inp in enumerate(inputs):
            chars = len(inp.prompt or "") + len(inp.response or "") + len(inp.text or "")
            chars += sum(len(m.content) + len(m.role) for m in inp.messages or ())
            chars += sum(len(step) for step in inp.steps or ())
            if chars > limit:
                raise InputError(
                    f"{chars} characters; the limit is {limit} (input_chars_per_token x max_input_tokens"
                    f"{' x 4 with truncate' if truncate else ''}). Raise "
                    f"{setting_name('input_chars_per_token')} or {setting_name('max_input_tokens')}",
                    index=i,
                )

    def estimate_tokens(self, inp: ScoreInput) -> int:
        """Tokens ``inp`` will have, guessed from its characters before any tokenizing (admission):
        ~4 characters a token for English BPE, plus the chat template's framing, capped at the
        longest accepted input. The reservation is corrected to the real count once tokenized."""
        chars = sum(len(m.content) + len(m.role) for m in inp.messages or ())
        chars += sum(len(t) for t in (inp.prompt, inp.response, inp.text) if t is not None)
        chars += sum(len(step) for step in inp.steps or ())
        return min(self.engine.max_input_tokens, chars // _CHARS_PER_TOKEN + _FRAMING_TOKENS)

    def _on_batch(self, stats: BatchStats) -> None:
        m, name = self.metrics, self.name
        m.inference_duration.labels(name).observe(stats.run_seconds)
        m.batch_size.labels(name).observe(stats.rows)
        m.batch_tokens.labels(name).observe(stats.tokens)
        m.batch_padding_ratio.labels(name).observe(1 - stats.tokens / stats.cost if stats.cost else 0.0)
        queue = m.queue_duration.labels(name)
        for seconds in stats.queue_seconds:
            queue.observe(seconds)

    def _observe(self, inputs: Sequence[ScoreInput], outputs: list[ScoreOutput]) -> None:
        self.metrics.tokens_scored.labels(self.name).inc(sum(o.tokens for o in outputs))
        self.metrics.inputs_scored.labels(self.name).inc(len(outputs))
        lengths = [float(len(_response_text(i))) for i in inputs]
        self.metrics.observe_rewards(self.name, [o.score for o in outputs], lengths)

    def _encode_all(self, inputs: list[ScoreInput], truncate: bool) -> list[Encoded]:
        out = []
        for i, inp in enumerate(inputs):
            try:
                out.append(self.engine.encode(inp, truncate=truncate))
            except InputError as exc:
                raise InputError(str(exc), index=i) from None
        return out


_CHARS_PER_TOKEN = 4
_FRAMING_TOKENS = 16


def _check_finite(index: int, out: ScoreOutput) -> NonFiniteReward | None:
    """The batcher's per-result check: a NaN/Inf reward fails its own request only."""
    if math.isfinite(out.score) and all(math.isfinite(v) for v in out.values):
        return None
    return NonFiniteReward(
        f"the model produced a non-finite reward for input {index} ({out.score}); the model or this "
        "input is broken (other inputs are unaffected)"
    )


def _response_text(inp: ScoreInput) -> str:
    """The part of an input whose length a reward may wrongly learn to track."""
    if inp.response is not None:
        return inp.response
    if inp.messages:
        return inp.messages[-1].content
    return inp.text or ""
