"""What the GPU path relies on, checked on the CPU: the reward head runs in fp32 on bf16 hidden
states, a batch's rewards cross to the host in one copy with unchanged values, and an out-of-memory
frees the failed forward's tensors before the batcher runs the halves."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rewardserve.config import Settings
from rewardserve.scoring.batcher import Batcher
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.types import Encoded, ScoreInput

TEXTS = [
    f"answer number {i}: " + "the model reads each answer and gives a number " * (i % 5 + 1)
    for i in range(12)
]


def _engine(path: Path, **kw: Any) -> RewardEngine:
    settings = Settings(model=path, device="cpu", fused_cpu=False, warmup=False, **kw)
    return RewardEngine.load(path, settings)


def _encoded(engine: RewardEngine) -> list[Encoded]:
    return [engine.encode(ScoreInput(text=t), truncate=False) for t in TEXTS]


@pytest.mark.parametrize("strategy", ["packed", "padded", "sequential"])
def test_bf16_model_reads_rewards_with_an_fp32_head(tiny_llama: Path, strategy: str) -> None:
    engine = _engine(tiny_llama, dtype="bfloat16", batch_strategy=strategy)
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    items = _encoded(engine)
    got = [o.score for o in engine.score_encoded(items, 10**6, 64)]
    head = engine.model.score
    expected = []
    with torch.inference_mode():
        for e in items:
            ids = torch.tensor([e.input_ids])
            hidden = engine.model.model(input_ids=ids, use_cache=False).last_hidden_state[0, -1]
            assert hidden.dtype == torch.bfloat16
            expected.append(float(F.linear(hidden.float(), head.weight.float())[0]))
    # The packed/padded forwards differ from the one-sequence forward only by bf16 rounding inside
    # the model; sequential is the same computation, so exact.
    tol = 0.0 if strategy == "sequential" else 0.05
    assert got == pytest.approx(expected, abs=tol, rel=0)
    # A bf16 head would round every reward to a bf16 value; these are not all on that grid.
    rounded = [float(torch.tensor(s).bfloat16().float()) for s in got]
    assert sum(r != s for r, s in zip(rounded, got, strict=True)) >= len(got) // 2


@pytest.mark.parametrize("strategy", ["packed", "padded", "sequential"])
def test_batch_scores_equal_a_plain_forward_per_row(tiny_llama: Path, strategy: str) -> None:
    """One device->host copy per batch (and loading with device_map) leaves every score as a plain
    transformers forward of that row gives it, multi-row batches included."""
    engine = _engine(tiny_llama, batch_strategy=strategy)
    items = _encoded(engine)
    outs = engine.run(engine.prepare(items))
    with torch.inference_mode():
        ref = [float(engine.model(input_ids=torch.tensor([e.input_ids])).logits[0, 0]) for e in items]
    assert [o.score for o in outs] == pytest.approx(ref, abs=1e-5)
    assert all(o.values == (o.score,) and isinstance(o.score, float) for o in outs)
    assert [o.tokens for o in outs] == [e.n_tokens for e in items]


async def test_out_of_memory_frees_the_failed_batch_before_the_halves_run(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An injected CUDA OOM in the middle of a real forward: the batcher splits, and by the time the
    first half reaches the head, the failed forward's tensors (its hidden states and an activation
    its frame held) are gone: the OOM's traceback was let go before the split, not chained into it."""
    engine = _engine(tiny_llama, batch_strategy="packed")
    items = _encoded(engine)
    clean = [o.score for o in engine.run(engine.prepare(items))]
    real_score = engine._score
    refs: list[weakref.ref[torch.Tensor]] = []
    freed_at_halves: list[bool] = []

    def score(hidden: torch.Tensor) -> torch.Tensor:
        if not refs:
            activation = torch.empty(1 << 20)  # what the failed forward's frames hold
            refs.extend([weakref.ref(hidden), weakref.ref(activation)])
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
        freed_at_halves.append(all(r() is None for r in refs))
        return real_score(hidden)

    monkeypatch.setattr(engine, "_score", score)
    batcher: Batcher[Encoded, Any, Any] = Batcher(
        prepare=engine.prepare,
        run=engine.run,
        batch_cost=engine.batch_cost,
        max_batch_tokens=10**6,
        max_batch_rows=64,
        max_queued_requests=10,
        max_queued_tokens=10**7,
    )
    await batcher.start()
    try:
        results = await asyncio.wait_for(batcher.submit(items, [e.n_tokens for e in items]), 120)
    finally:
        await batcher.close()
    assert len(refs) == 2 and len(freed_at_halves) >= 2
    assert all(freed_at_halves), freed_at_halves
    assert [r.score for r in results] == pytest.approx(clean, abs=1e-5)
