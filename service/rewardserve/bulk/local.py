"""The in-process scorer: the serving engine's own tokenizer, template, heads and batch strategy.

``RewardEngine.encode`` + ``score_encoded`` are what the server runs under its batcher, so a reward
from here equals the one ``/v1/score`` returns for the same input and settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rewardserve.bulk.job import Failed, OnProgress
from rewardserve.config import Settings
from rewardserve.errors import InputError, OutOfMemory
from rewardserve.naming import setting_name
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.types import Encoded, ScoreInput, ScoreOutput


class LocalScorer:
    """Scores with a RewardEngine loaded in this process."""

    def __init__(self, engine: RewardEngine, settings: Settings, *, model_name: str, chunk_rows: int = 256):
        self.engine = engine
        self._name = model_name
        # Same floor as the server's batcher: the longest allowed input must fit in one batch.
        self.max_batch_tokens = max(settings.max_batch_tokens, engine.batch_cost([engine.max_input_tokens]))
        self.max_batch_rows = settings.max_batch_rows
        self.chunk_rows = chunk_rows

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
        out: list[ScoreOutput | Failed | None] = [None] * len(inputs)
        encoded: list[tuple[int, Encoded]] = []
        for i, inp in enumerate(inputs):
            try:
                encoded.append((i, self.engine.encode(inp, truncate=truncate)))
            except InputError as exc:
                out[i] = Failed(str(exc))
            except Exception as exc:  # a chat template that rejects this conversation, for one
                out[i] = Failed(f"could not tokenize: {type(exc).__name__}: {exc}")
        refused = len(inputs) - len(encoded)
        if on_progress is not None and refused:
            on_progress(refused, 0)
        # Chunks only so progress moves inside a shard; score_encoded batches by token budget within.
        for start in range(0, len(encoded), self.chunk_rows):
            chunk = encoded[start : start + self.chunk_rows]
            results = self._run([e for _, e in chunk])
            for (i, _), result in zip(chunk, results, strict=True):
                out[i] = result
            if on_progress is not None:
                on_progress(len(chunk), sum(e.n_tokens for _, e in chunk))
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
