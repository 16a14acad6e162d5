"""The in-process scorer: the serving engine's own tokenizer, template, heads and batch strategy.

``RewardEngine.encode`` + ``prepare``/``run`` are what the server runs under its batcher, so a reward
from here equals the one ``/v1/score`` returns for the same input and settings.

Like the server, it keeps every compute worker busy (``engine.workers`` batches at once, each on its
share of the cores) and tokenizes the next batches while they run: tokenizing a whole shard first and
then scoring it in a few large calls left a core idle (issue 14: local 6.1k tok/s against 9.0k for the
engine alone on a 2-core box).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rewardserve.bulk.job import Failed, OnProgress
from rewardserve.config import Settings
from rewardserve.errors import InputError, OutOfMemory
from rewardserve.naming import setting_name
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.types import Encoded, ScoreInput, ScoreOutput


class LocalScorer:
    """Scores with a RewardEngine loaded in this process."""

    def __init__(self, engine: RewardEngine, settings: Settings, *, model_name: str):
        self.engine = engine
        self._name = model_name
        # Same floor as the server's batcher: the longest allowed input must fit in one batch.
        self.max_batch_tokens = max(settings.max_batch_tokens, engine.batch_cost([engine.max_input_tokens]))
        self.max_batch_rows = settings.max_batch_rows

    @classmethod
    def load(cls, path: Path, settings: Settings, *, model_name: str) -> LocalScorer:
        return cls(RewardEngine.load(path, settings), settings, model_name=model_name)

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def objectives(self) -> tuple[str, ...]:
        return self.engine.info.objectives

    def score(
        self, inputs: Sequence[ScoreInput], *, truncate: bool, on_progress: OnProgress | None = None
    ) -> list[ScoreOutput | Failed]:
        """Tokenize in this thread while ``workers`` threads compute the batches already formed (at
        most one more batch waits per worker, so memory stays bounded); results in input order."""
        out: list[ScoreOutput | Failed | None] = [None] * len(inputs)
        workers = max(1, self.engine.workers)
        in_flight: deque[tuple[list[int], list[Encoded], Future[list[ScoreOutput | Failed]]]] = deque()

        def collect(keep: int) -> None:
            while len(in_flight) > keep:
                index, items, future = in_flight.popleft()
                for i, result in zip(index, future.result(), strict=True):
                    out[i] = result
                if on_progress is not None:
                    on_progress(len(items), sum(e.n_tokens for e in items))

        with ThreadPoolExecutor(workers, thread_name_prefix="rewardserve-bulk") as pool:
            index: list[int] = []
            batch: list[Encoded] = []
            lengths: list[int] = []
            for i, inp in enumerate(inputs):
                try:
                    item = self.engine.encode(inp, truncate=truncate)
                except InputError as exc:
                    out[i] = Failed(str(exc))
                    if on_progress is not None:
                        on_progress(1, 0)
                    continue
                except Exception as exc:  # a chat template that rejects this conversation, for one
                    out[i] = Failed(f"could not tokenize: {type(exc).__name__}: {exc}")
                    if on_progress is not None:
                        on_progress(1, 0)
                    continue
                lengths.append(item.n_tokens)
                full = (
                    len(batch) >= self.max_batch_rows
                    or self.engine.batch_cost(lengths) > self.max_batch_tokens
                )
                if batch and full:
                    in_flight.append((index, batch, pool.submit(self._run, batch)))
                    collect(2 * workers - 1)
                    index, batch, lengths = [], [], [item.n_tokens]
                index.append(i)
                batch.append(item)
            if batch:
                in_flight.append((index, batch, pool.submit(self._run, batch)))
            collect(0)
        assert all(o is not None for o in out)
        return [o for o in out if o is not None]

    def _run(self, items: list[Encoded]) -> list[ScoreOutput | Failed]:
        """Score items; an error caused by one item fails only that item (halve until it is found)."""
        try:
            return list(self.engine.score_encoded(items, self.max_batch_tokens, self.max_batch_rows))
        except OutOfMemory:
            if len(items) == 1:
                reason = f"out of memory scoring this row alone; lower {setting_name('max_input_tokens')}"
                return [Failed(reason)]
        except Exception as exc:
            if len(items) == 1:
                return [Failed(f"scoring failed: {type(exc).__name__}: {exc}")]
        half = len(items) // 2
        return self._run(items[:half]) + self._run(items[half:])
