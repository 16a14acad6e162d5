"""A reward model whose forward pass a test can hold at a gate or make fail.

``ServerThread(settings, load_model=gated_loader)`` (or ``RewardServer(..., load_model=...)``) serves
a ``GatedModel``; ``with gated(srv.scoring.engine) as gate:`` then holds every batch at ``run`` until
``gate.release`` is set, recording what reached it. Outside the block it is the plain engine.
``delay`` slows every forward (a slow model for overload tests); ``nan_if`` turns the reward of the
inputs it picks into NaN (a broken model for the non-finite tests); ``failure`` makes ``run`` raise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from rewardserve.app import load_engine
from rewardserve.config import Settings
from rewardserve.scoring.engine import Prepared, RewardEngine
from rewardserve.scoring.service import ScoringModel
from rewardserve.scoring.types import Encoded, ModelInfo, ScoreInput, ScoreOutput


@dataclass
class Gate:
    """``run`` blocks until ``release``; ``seen`` records every sequence that reached it."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    seen: list[list[int]] = field(default_factory=list)


class GatedModel:
    """A RewardEngine (``ScoringModel``) whose ``run`` can be gated or made to raise ``failure``."""

    def __init__(self, engine: RewardEngine) -> None:
        self.inner = engine
        self.gate: Gate | None = None
        self.failure: BaseException | None = None
        self.delay = 0.0
        self.nan_if: Callable[[Encoded], bool] | None = None

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    @property
    def workers(self) -> int:
        return self.inner.workers

    @property
    def max_input_tokens(self) -> int:
        return self.inner.max_input_tokens

    def encode(self, inp: ScoreInput, *, truncate: bool) -> Encoded:
        return self.inner.encode(inp, truncate=truncate)

    def batch_cost(self, lengths: Sequence[int]) -> int:
        return self.inner.batch_cost(lengths)

    def prepare(self, items: list[Encoded]) -> Prepared:
        return self.inner.prepare(items)

    def run(self, batch: Prepared) -> list[ScoreOutput]:
        if self.failure is not None:
            raise self.failure
        gate = self.gate
        if gate is not None:
            gate.seen.extend(list(e.input_ids) for e in batch.items)
            gate.entered.set()
            gate.release.wait(60)
        if self.delay:
            time.sleep(self.delay)
        outputs = self.inner.run(batch)
        nan_if = self.nan_if
        if nan_if is None:
            return outputs
        return [
            dataclasses.replace(out, score=math.nan) if nan_if(item) else out
            for out, item in zip(outputs, batch.items, strict=True)
        ]


async def gated_loader(settings: Settings) -> ScoringModel:
    """A ``load_model`` for ServerThread / RewardServer: the real engine, wrapped."""
    return GatedModel(await load_engine(settings))


@contextlib.contextmanager
def gated(model: object) -> Iterator[Gate]:
    """Hold ``model``'s forward pass (a GatedModel) until the gate is released or the block ends."""
    if not isinstance(model, GatedModel):
        raise TypeError("serve with load_model=gated_loader to gate the model")
    gate = model.gate = Gate()
    try:
        yield gate
    finally:
        gate.release.set()
        model.gate = None
