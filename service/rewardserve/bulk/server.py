"""Score against a running rewardserve (``engine="server"``), through ``AsyncRewardClient``.

The trainer-facing client does the talking, so bulk scoring has no wire encoding or retry rules of
its own: retries are the client's ``RetryPolicy`` (429, 502, 503 and connection failures are retried
with backoff, at least the server's Retry-After; timeouts and 504 are not, since the call may still
be running on the server), with ``max_retries`` retries per request. At most ``concurrency``
requests of ``batch_size`` rows are in flight. What is particular to bulk scoring is what to do with
a refusal: a 422 that names one input (``inputs[i]: ...``) fails that row only and the rest of the
request is sent again; a 413, or a refusal that names no input, splits the request in two until the
row at fault is found.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Sequence

from rewardserve.bulk.job import Failed, OnProgress
from rewardserve.client import AsyncRewardClient, RetryEvent, RetryPolicy
from rewardserve.client.errors import InvalidRequest, NotSupported, RewardServeError, ServerError
from rewardserve.client.types import Input, ScoreDetail
from rewardserve.errors import BulkError
from rewardserve.scoring.types import ScoreInput, ScoreOutput

log = logging.getLogger(__name__)
_INPUT_INDEX = re.compile(r"^inputs\[(\d+)\]: (.*)$", re.S)
_NON_FINITE = re.compile(r"non-finite reward for input (\d+)")


def client_input(inp: ScoreInput) -> Input:
    """One row's input in the client's terms (the client encodes it for the wire)."""
    if inp.messages is not None:
        return [{"role": m.role, "content": m.content} for m in inp.messages]
    if inp.text is not None:
        return inp.text
    return (inp.prompt or "", inp.response or "")


class ServerScorer:
    """Scores through a server; use as a context manager (it owns an event loop and a connection pool)."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        concurrency: int = 8,
        batch_size: int = 64,
        max_retries: int = 10,
        timeout_s: float = 300.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._model = model
        self._name = model or ""
        self._objectives: tuple[str, ...] = ()
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        # Bulk jobs run for hours, so they wait longer between retries than a trainer would.
        self._retry = RetryPolicy(
            max_attempts=max_retries + 1, initial_backoff_s=0.25, max_backoff_s=max_backoff_s
        )
        # One loop for the scorer's whole life, so the pooled connections survive between shards.
        self._runner = asyncio.Runner()
        self._client: AsyncRewardClient | None = None
        self._slots: asyncio.Semaphore | None = None

    def __enter__(self) -> ServerScorer:
        try:
            self._runner.run(self._open())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._runner.run(self._client.aclose())
            self._client = None
        self._runner.close()

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def objectives(self) -> tuple[str, ...]:
        return self._objectives

    async def _open(self) -> None:
        # Made inside the loop: the client's connections belong to the loop that creates them.
        self._client = AsyncRewardClient(
            self.url,
            timeout=self.timeout_s,
            retry=self._retry,
            max_inputs_per_request=max(self.batch_size, 1),
            max_concurrency=self.concurrency,
            on_retry=_log_retry,
        )
        self._slots = asyncio.Semaphore(self.concurrency)
        # A server that is up but still loading its model (503) gets the same patience as any request;
        # a wrong URL fails once the retries are spent.
        try:
            models = [m for m in await self._client.models() if m.kind == "reward"]
        except NotSupported:
            raise BulkError(f"{self.url} does not serve /v1/models: is this a rewardserve server?") from None
        except RewardServeError as exc:
            raise self._failed("/v1/models", exc) from None
        chosen = [m for m in models if self._model in (None, m.id)]
        if not chosen:
            served = [m.id for m in models]
            raise BulkError(
                f"the server at {self.url} does not serve model {self._model!r}; it serves {served}"
            )
        self._name = chosen[0].id
        self._objectives = chosen[0].objectives

    def score(
        self, inputs: Sequence[ScoreInput], *, truncate: bool, on_progress: OnProgress | None = None
    ) -> list[ScoreOutput | Failed]:
        return self._runner.run(self._score_all(list(inputs), truncate, on_progress))

    async def _score_all(
        self, inputs: list[ScoreInput], truncate: bool, on_progress: OnProgress | None
    ) -> list[ScoreOutput | Failed]:
        out: list[ScoreOutput | Failed | None] = [None] * len(inputs)

        async def one_request(indices: list[int]) -> None:
            await self._score_batch(inputs, indices, truncate, out)
            if on_progress is not None:
                tokens = sum(o.tokens for o in (out[i] for i in indices) if isinstance(o, ScoreOutput))
                on_progress(len(indices), tokens)

        batches = [
            list(range(s, min(s + self.batch_size, len(inputs))))
            for s in range(0, len(inputs), self.batch_size)
        ]
        await asyncio.gather(*(one_request(b) for b in batches))
        return [o for o in out if o is not None]

    async def _score_batch(
        self,
        inputs: list[ScoreInput],
        pending: list[int],
        truncate: bool,
        out: list[ScoreOutput | Failed | None],
    ) -> None:
        """Score ``pending`` into ``out``; refused rows get Failed, the others are sent again."""
        assert self._client is not None and self._slots is not None
        while pending:
            try:
                async with self._slots:
                    result = await self._client.score_details(
                        [client_input(inputs[i]) for i in pending], model=self._model, truncate=truncate
                    )
            except InvalidRequest as exc:
                refused = exc
            except ServerError as exc:
                # A NaN/Inf reward fails its own request (500 naming the input): that row goes to the
                # errors file and the others are sent again.
                nan = _NON_FINITE.search(exc.message)
                if nan is None or int(nan.group(1)) >= len(pending):
                    raise self._failed("/v1/score", exc) from None
                bad = int(nan.group(1))
                out[pending[bad]] = Failed("the model produced a non-finite reward")
                pending = pending[:bad] + pending[bad + 1 :]
                continue
            except RewardServeError as exc:
                raise self._failed("/v1/score", exc) from None
            else:
                for i, score, detail in zip(pending, result.scores, result.details, strict=True):
                    out[i] = self._output(score, detail)
                return
            too_large = refused.status == 413
            m = _INPUT_INDEX.match(refused.message)
            if too_large and len(pending) > 1:
                half = len(pending) // 2
                await self._score_batch(inputs, pending[:half], truncate, out)
                pending = pending[half:]
            elif m is not None and int(m.group(1)) < len(pending):
                bad = int(m.group(1))
                out[pending[bad]] = Failed(m.group(2))
                pending = pending[:bad] + pending[bad + 1 :]
            elif len(pending) == 1:
                reason = "row is larger than the server's body limit" if too_large else refused.message
                out[pending[0]] = Failed(reason)
                return
            else:  # a refusal that names no input: find the culprit by halving
                half = len(pending) // 2
                await self._score_batch(inputs, pending[:half], truncate, out)
                pending = pending[half:]

    def _output(self, score: float | None, detail: ScoreDetail) -> ScoreOutput:
        if score is None or detail.mask:  # the entry failed for this row: kept, with its status
            width = max(1, len(self._objectives))
            status = detail.status if detail.status != "ok" else "error"
            return ScoreOutput(
                score=math.nan,
                values=(math.nan,) * width,
                tokens=detail.tokens,
                truncated=detail.truncated,
                status=status,  # type: ignore[arg-type]
            )
        objectives = detail.objectives or {}
        values = tuple(objectives[k] for k in self._objectives) if self._objectives else (float(score),)
        return ScoreOutput(
            score=float(score), values=values, tokens=detail.tokens, truncated=detail.truncated
        )

    def _failed(self, path: str, exc: RewardServeError) -> BulkError:
        if exc.retryable:
            return BulkError(
                f"{self.url}{path} still failing after {self.max_retries} retries ({exc}); the finished "
                "shards are kept: rerun the same command to resume",
                exit_code=1,
            )
        return BulkError(
            f"{self.url}{path} failed: {exc}; the finished shards are kept: rerun the same command to resume",
            exit_code=1,
        )


def _log_retry(event: RetryEvent) -> None:
    log.debug(
        "%s: %s %s; retry %d in %.1fs",
        event.endpoint,
        event.error.status,
        event.error.message,
        event.attempt,
        event.delay_s,
    )
