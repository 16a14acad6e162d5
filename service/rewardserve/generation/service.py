"""GenerationService: the one object both transports call for policy samples and weight reloads.

Order of work for a call: cheap checks (sizes, generator name) -> tokenize in the tokenizer thread
(length errors name the prompt) -> pass the reload gate -> one vLLM request per prompt (each with its
n samples), all submitted at once so the engine batches them.

Reloads: the gate closes (new calls wait in front of it), in-flight calls finish on the old weights,
the engine swaps weights while idle, the version goes up and the gate opens. So every call runs on
one weights version from start to end, and the version it reports is the one that made its samples.
Nothing is dropped: a call either ran before the swap or waits for it (bounded by
generator_reload_timeout_s, then 503).

Cancellation: a caller that goes away cancels the task awaiting the call; that cancels each prompt's
vLLM iterator, and AsyncLLM aborts the request in the engine. Each such abort is logged with its
request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewardserve.config import Settings
from rewardserve.errors import Draining, InputError, ModelNotFound, NotReady
from rewardserve.generation.checkpoint import check_checkpoint, tensor_shapes
from rewardserve.generation.types import (
    GenerateResult,
    GeneratorInfo,
    PromptInput,
    PromptResult,
    SampleDelta,
    SamplingOptions,
)
from rewardserve.inflight import InFlight
from rewardserve.metrics import Metrics

if TYPE_CHECKING:
    from rewardserve.generation.vllm_engine import VLLMEngine

log = logging.getLogger(__name__)


class GenerationService:
    """Policy sampling over one vLLM engine, with reloadable weights."""

    def __init__(self, engine: VLLMEngine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.settings = settings
        self.name = settings.generator_name
        self.weights_version = 0
        # Shapes of the served checkpoint: what any reloaded one must match (headers only, cheap).
        self._reference = tensor_shapes(engine.path)
        self._tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardserve-gen-tokenize")
        self._gate = asyncio.Event()  # open except while weights are swapped
        self._gate.set()
        self._reload_lock = asyncio.Lock()
        self._calls = InFlight()
        self._closed = False
        self.active: set[str] = set()  # vLLM request ids submitted and not finished
        self._busy_since = time.monotonic()  # when ``active`` last went from empty to non-empty

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._calls.count

    @property
    def reloading(self) -> bool:
        """A weight swap is under way: new calls wait for it."""
        return not self._gate.is_set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight. True if idle before the timeout."""
        return await self._calls.wait_idle(timeout)

    @property
    def engine_dead(self) -> bool:
        """The vLLM engine core process is gone: nothing can be generated until a restart."""
        return self.engine.dead

    def stalled_seconds(self, now: float | None = None) -> float:
        """With requests in the engine: seconds since it last produced output (or since the oldest
        wait began). 0 when idle. The watchdog reads it."""
        if not self.active:
            return 0.0
        now = time.monotonic() if now is None else now
        return now - max(self.engine.last_output, self._busy_since)

    async def abort_all(self) -> None:
        """Abort every request still in the engine (end of a drain, or the engine died); their
        callers get an error now instead of waiting."""
        if self.active and not self.engine_dead:
            await self.engine.abort(sorted(self.active))

    async def close(self) -> None:
        """Refuse new calls, abort what is still running, stop the engine processes."""
        self._closed = True
        if self.active:
            await self.engine.abort(sorted(self.active))
        self._tokenize.shutdown(wait=False, cancel_futures=True)
        await self.engine.stop_output_task()
        await asyncio.to_thread(self.engine.shutdown)

    def info(self) -> GeneratorInfo:
        return self.engine.info(self.name, self.weights_version)

    def check_generator(self, name: str | None) -> None:
        if name not in (None, "", self.name):
            raise ModelNotFound(f"generator {name!r} is not served here; available: [{self.name!r}]")

    # --- calls ----------------------------------------------------------------------------------

    async def generate(
        self, prompts: Sequence[PromptInput], opts: SamplingOptions, *, generator: str | None = None
    ) -> GenerateResult:
        """n samples for each prompt; ``results[i]`` belongs to ``prompts[i]``."""
        ids = await self._prepare(prompts, opts, generator)
        if not ids:
            return GenerateResult(results=(), weights_version=self.weights_version)
        started = time.perf_counter()
        async with self._admitted() as version:
            from rewardserve.generation.vllm_engine import sampling_params, to_sample

            params = sampling_params(opts, stream=False, decode_here=self.engine.decodes_text)
            loop = asyncio.get_running_loop()

            async def one(prompt_ids: list[int]) -> PromptResult:
                request_id = self._request_id()
                final = None
                async with self._tracked(request_id) as done:
                    async for out in self.engine.generate(request_id, prompt_ids, params):
                        final = out
                    done()
                assert final is not None, "vLLM ended a request without a final output"
                texts: list[str | None] = [None] * len(final.outputs)
                if not params.detokenize:  # vLLM left the text to us (sampling_params says why)
                    texts = await loop.run_in_executor(
                        self._tokenize, self._decode, prompt_ids, final.outputs
                    )
                outs = zip(final.outputs, texts, strict=True)
                samples = sorted((to_sample(o, opts, text) for o, text in outs), key=lambda s: s.index)
                return PromptResult(prompt_tokens=len(prompt_ids), samples=tuple(samples))

            results = await _gather_or_cancel([one(p) for p in ids])
        self.metrics.generation_duration.labels(self.name).observe(time.perf_counter() - started)
        sampled = sum(len(s.token_ids) for r in results for s in r.samples)
        self.metrics.generated_tokens.labels(self.name).inc(sampled)
        return GenerateResult(results=tuple(results), weights_version=version)

    async def complete(self, prompt_ids: list[int], params: Any) -> Any:
        """One already-tokenized prompt with caller-made vLLM ``SamplingParams``; the final
        ``RequestOutput``. For judges: they build their own params (one token with the logprobs of
        the choice tokens, or greedy text) and share this engine's admission, reload gate and
        cancellation with policy sampling."""
        if self._closed:
            raise Draining("server is draining")
        limit = self.engine.max_model_len
        if len(prompt_ids) >= limit:
            raise InputError(f"prompt is {len(prompt_ids)} tokens; the engine's max_model_len is {limit}")
        async with self._admitted():
            request_id = self._request_id()
            final = None
            async with self._tracked(request_id) as done:
                async for out in self.engine.generate(request_id, prompt_ids, params):
                    final = out
                done()
        assert final is not None, "vLLM ended a request without a final output"
        return final

    async def open_stream(
        self, prompts: Sequence[PromptInput], opts: SamplingOptions, *, generator: str | None = None
    ) -> GenerationStream:
        """Validate and tokenize now (so bad input fails before a stream starts), stream on iteration."""
        ids = await self._prepare(prompts, opts, generator)
        return GenerationStream(self, ids, opts)

    async def reload_weights(self, path: Path) -> int:
        """Load a same-architecture checkpoint into the running engine; returns the new version."""
        if self._closed:
            raise Draining("server is draining")
        await asyncio.to_thread(check_checkpoint, path, self._reference)
        timeout = self.settings.generator_reload_timeout_s
        async with self._reload_lock:
            self._gate.clear()
            try:
                if not await self.wait_idle(timeout):
                    raise NotReady(
                        f"in-flight generation did not finish within {timeout:.0f}s, so the weights were "
                        "not changed; retry, or raise generator_reload_timeout_s"
                    )
                await self.engine.reload(path, self.weights_version + 1)
                self.weights_version += 1
            finally:
                self._gate.set()
        log.info("policy weights reloaded: version %d", self.weights_version)
        return self.weights_version

    # --- internals ------------------------------------------------------------------------------

    async def _prepare(
        self, prompts: Sequence[PromptInput], opts: SamplingOptions, generator: str | None
    ) -> list[list[int]]:
        if self._closed:
            raise Draining("server is draining")
        self.check_generator(generator)
        from rewardserve.generation.vllm_engine import sampling_params

        # vLLM's own checks (e.g. n > 1 needs temperature > 0) now, so that a stream is refused with
        # a 422 instead of failing after its 200 went out.
        sampling_params(opts, stream=False)
        limit = self.settings.generator_max_samples_per_request
        if len(prompts) * opts.n > limit:
            raise InputError(
                f"{len(prompts)} prompts x n={opts.n} = {len(prompts) * opts.n} samples in one request; "
                f"the limit is {limit} (generator_max_samples_per_request). Split the request."
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize, self._encode_all, list(prompts))

    def _encode_all(self, prompts: list[PromptInput]) -> list[list[int]]:
        out = []
        max_len = self.engine.max_model_len
        for i, p in enumerate(prompts):
            where = "messages" if p.messages is not None else "prompts"
            if p.messages is not None:
                msgs = [{"role": m.role, "content": m.content} for m in p.messages]
                try:
                    ids = self.engine.encode_chat(msgs)
                except InputError:
                    raise
                except Exception as exc:  # a template that rejects these messages (jinja raise)
                    raise InputError(f"{where}[{i}]: chat template failed: {exc}") from None
            else:
                ids = self.engine.encode_text(p.text or "")
            if not ids:
                raise InputError(f"{where}[{i}]: prompt is empty after tokenization")
            if len(ids) >= max_len:
                raise InputError(
                    f"{where}[{i}]: prompt is {len(ids)} tokens; the generator's max_model_len is {max_len}, "
                    "which must also leave room for at least one generated token. Shorten the prompt."
                )
            out.append(ids)
        return out

    def _decode(self, prompt_ids: list[int], outputs: Sequence[Any]) -> list[str | None]:
        # finish_reason "stop" without a stop string means an eos or stop token id ended the sample.
        return [
            self.engine.completion_text(prompt_ids, o.token_ids, stopped_on_token=o.finish_reason == "stop")
            for o in outputs
        ]

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[int]:
        """Wait out a reload, count the call in flight; yields the weights version it runs on."""
        if not self._gate.is_set():
            try:
                await asyncio.wait_for(self._gate.wait(), self.settings.generator_reload_timeout_s)
            except TimeoutError:
                raise NotReady("policy weights are being reloaded; retry shortly") from None
        if self._closed:
            raise Draining("server is draining")
        with self._calls.track():
            yield self.weights_version

    @contextlib.asynccontextmanager
    async def _tracked(self, request_id: str) -> AsyncIterator[Any]:
        """Track one vLLM request; one that leaves before ``done()`` was called counts as aborted
        (AsyncLLM has already aborted it in the engine when the iterator was cancelled or closed)."""
        finished = False

        def done() -> None:
            nonlocal finished
            finished = True

        if not self.active:
            self._busy_since = time.monotonic()
        self.active.add(request_id)
        try:
            yield done
        finally:
            self.active.discard(request_id)
            if not finished:
                log.info("generation %s aborted before it finished", request_id)

    def _request_id(self) -> str:
        return f"gen-{uuid.uuid4().hex[:16]}"


class GenerationStream:
    """Streamed samples of one call, as deltas from all prompts interleaved in arrival order.

    Iterate it once; ``aclose()`` (or cancelling the iterating task) aborts every unfinished request.
    """

    def __init__(self, service: GenerationService, ids: list[list[int]], opts: SamplingOptions) -> None:
        self._service = service
        self._ids = ids
        self._opts = opts
        self.prompt_tokens = [len(p) for p in ids]
        self.weights_version = service.weights_version
        self._agen: AsyncGenerator[SampleDelta, None] = self._run()

    def __aiter__(self) -> AsyncIterator[SampleDelta]:
        return self._agen

    async def aclose(self) -> None:
        await self._agen.aclose()

    async def _run(self) -> AsyncGenerator[SampleDelta, None]:
        if not self._ids:
            return
        from rewardserve.generation.vllm_engine import sampling_params, to_sample

        service = self._service
        params = sampling_params(self._opts, stream=True)
        queue: asyncio.Queue[SampleDelta | BaseException | None] = asyncio.Queue()

        async def pump(prompt_index: int, prompt_ids: list[int]) -> None:
            request_id = service._request_id()
            try:
                async with service._tracked(request_id) as done:
                    async for out in service.engine.generate(request_id, prompt_ids, params):
                        for o in out.outputs:
                            s = to_sample(o, self._opts)
                            queue.put_nowait(
                                SampleDelta(
                                    prompt_index=prompt_index,
                                    index=s.index,
                                    text=s.text,
                                    token_ids=s.token_ids,
                                    finish_reason=s.finish_reason,
                                    cumulative_logprob=s.cumulative_logprob,
                                    logprobs=s.logprobs,
                                )
                            )
                    done()
            except Exception as exc:
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(None)

        async with service._admitted() as version:
            self.weights_version = version
            tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(self._ids)]
            try:
                remaining = len(tasks)
                while remaining:
                    item = await queue.get()
                    if item is None:
                        remaining -= 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
            finally:
                # Normal end: all done, nothing to cancel. Error, aclose or cancellation: every
                # still-running prompt is cancelled, which aborts it in the engine.
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def _gather_or_cancel(coros: list[Any]) -> list[Any]:
    """asyncio.gather that cancels the siblings when one fails or the caller is cancelled (plain
    gather leaves them running: their samples would be generated for nobody)."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def start_generation(settings: Settings, metrics: Metrics) -> GenerationService:
    """Start the vLLM engine for ``settings.generator`` (its blocking start-up runs in a thread, so
    the HTTP server keeps answering liveness meanwhile)."""
    # Importing vllm takes seconds; done inline it would block the event loop (and every health
    # probe) just like the engine start-up itself, so it runs in the thread too.
    await asyncio.to_thread(importlib.import_module, "rewardserve.generation.vllm_engine")
    from rewardserve.generation.vllm_engine import VLLMEngine  # now cached: instant

    path = settings.generator
    if path is None:
        raise ValueError("settings.generator is not set")
    engine = await asyncio.to_thread(VLLMEngine.start, path, settings)
    try:
        service = await asyncio.to_thread(GenerationService, engine, settings, metrics)
    except BaseException:
        await asyncio.to_thread(engine.shutdown)
        raise
    info = service.info()
    log.info(
        "generator %r ready: %s on %s/%s, max_model_len %d",
        info.name,
        info.architecture,
        info.device,
        info.dtype,
        info.max_model_len,
    )
    return service
