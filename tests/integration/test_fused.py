"""The fused CPU forward (scoring/fused.py): the cases the strategy invariant test does not reach."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rewardserve.config import Settings
from rewardserve.scoring import fused
from rewardserve.scoring.engine import RewardEngine
from rewardserve.scoring.types import Encoded

TOL = 1e-5


def _plain(path: Path) -> torch.nn.Module:
    model: torch.nn.Module = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    return model


def _plain_scores(model: torch.nn.Module, seqs: list[list[int]]) -> list[float]:
    with torch.no_grad():
        return [float(model(input_ids=torch.tensor([s])).logits[0, 0]) for s in seqs]


def _random_seqs(vocab: int, n: int, seed: int, lo: int = 1, hi: int = 90) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def test_reward_is_read_before_trailing_padding(tiny_llama: Path) -> None:
    """A sequence ending in pad tokens (pad == eos in many chat models) is read at its last real token."""
    engine = RewardEngine.load(tiny_llama, Settings(model=tiny_llama))
    assert engine.fused is not None and engine.strategy == "packed"
    pad = engine.pad_token_id
    assert pad is not None
    seqs = _random_seqs(engine.tokenizer.vocab_size, 6, seed=1)
    seqs = [s if pad not in s else [t for t in s if t != pad] or [5] for s in seqs]
    seqs[1] = seqs[1] + [pad, pad]
    seqs[4] = seqs[4] + [pad]
    got = [o.score for o in engine.run(engine.prepare([Encoded(s) for s in seqs]))]
    assert got == pytest.approx(_plain_scores(_plain(tiny_llama), seqs), abs=TOL)
    alone = [engine.run(engine.prepare([Encoded(s)]))[0].score for s in seqs]
    assert alone == pytest.approx(got, abs=TOL)


def test_without_onednn_plain_matmuls_give_the_same_scores(
    tiny_qwen2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where torch has no oneDNN, the fused forward runs F.linear (with Qwen2's q/k/v biases)."""
    monkeypatch.setattr(fused, "onednn_available", lambda: False)
    engine = RewardEngine.load(tiny_qwen2, Settings(model=tiny_qwen2))
    assert engine.info.kernels == "fused"
    seqs = _random_seqs(engine.tokenizer.vocab_size, 10, seed=2)
    got = [o.score for o in engine.run(engine.prepare([Encoded(s) for s in seqs]))]
    assert got == pytest.approx(_plain_scores(_plain(tiny_qwen2), seqs), abs=TOL)


def test_one_token_and_long_sequences(tiny_qwen3: Path) -> None:
    engine = RewardEngine.load(tiny_qwen3, Settings(model=tiny_qwen3))
    seqs = [[7], *_random_seqs(engine.tokenizer.vocab_size, 3, seed=3, lo=300, hi=500), [9, 11]]
    got = [o.score for o in engine.run(engine.prepare([Encoded(s) for s in seqs]))]
    assert got == pytest.approx(_plain_scores(_plain(tiny_qwen3), seqs), abs=TOL)


def test_configs_it_cannot_reproduce_keep_the_transformers_path(tiny_mistral: Path) -> None:
    model = _plain(tiny_mistral)
    assert fused.FusedDecoder.build(model, 512) is not None
    model.config.sliding_window = 64  # windowed attention is not what the per-sequence kernel does
    assert fused.FusedDecoder.build(model, 512) is None
    assert fused.FusedDecoder.build(model, 64) is not None  # a window no input can exceed is harmless
    model.config.sliding_window = None
    model.config.hidden_act = "gelu"
    assert fused.FusedDecoder.build(model, 512) is None
    model.config.hidden_act = "silu"
    assert fused.FusedDecoder.build(model.to(torch.bfloat16), 512) is None


def test_engine_setting_turns_it_off(tiny_llama: Path) -> None:
    engine = RewardEngine.load(tiny_llama, Settings(model=tiny_llama, fused_cpu=False))
    assert engine.fused is None and engine.info.kernels == "transformers"
    assert engine.strategy == "sequential"  # the CPU default for transformers' own modules
    assert engine.info.card()["kernels"] == "transformers"


def test_scripted_stack_equals_the_same_stack_run_as_python(tiny_qwen3: Path) -> None:
    """The server runs the TorchScript-compiled stack (no GIL held); it must be the Python one, exactly."""
    model = _plain(tiny_qwen3)
    scripted = fused.FusedDecoder.build(model, 512)
    assert scripted is not None and scripted.scripted
    plain = fused.FusedDecoder(model.base_model, model.config, onednn=scripted.onednn, script=False)
    assert not plain.scripted
    seqs = _random_seqs(model.config.vocab_size, 7, seed=4)
    ids = torch.tensor([t for s in seqs for t in s])
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    cu = [0]
    for s in seqs:
        cu.append(cu[-1] + len(s))
    read = [c - 1 for c in cu[1:]]
    with torch.inference_mode():
        a, b = scripted.forward(ids, positions, cu, read), plain.forward(ids, positions, cu, read)
    assert a.shape == (len(seqs), model.config.hidden_size)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_groups_split_a_big_batch_without_changing_scores(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = RewardEngine.load(tiny_llama, Settings(model=tiny_llama))
    seqs = _random_seqs(engine.tokenizer.vocab_size, 12, seed=5, lo=20, hi=60)
    whole = [o.score for o in engine.run(engine.prepare([Encoded(s) for s in seqs]))]
    monkeypatch.setattr(fused, "GROUP_TOKENS", 100)  # ~2-4 sequences per group
    grouped = [o.score for o in engine.run(engine.prepare([Encoded(s) for s in seqs]))]
    assert grouped == pytest.approx(whole, abs=1e-6)
    assert grouped == pytest.approx(_plain_scores(_plain(tiny_llama), seqs), abs=TOL)


def test_score_encoded_runs_workers_at_once_and_keeps_order(tiny_llama: Path) -> None:
    engine = RewardEngine.load(tiny_llama, Settings(model=tiny_llama, compute_workers=3))
    assert engine.workers == 3
    seqs = _random_seqs(engine.tokenizer.vocab_size, 30, seed=6)
    outs = engine.score_encoded([Encoded(s) for s in seqs], max_batch_tokens=128, max_rows=4)
    assert [o.tokens for o in outs] == [len(s) for s in seqs]
    assert [o.score for o in outs] == pytest.approx(_plain_scores(_plain(tiny_llama), seqs), abs=TOL)


def test_compute_layout_splits_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from rewardserve.scoring.engine import compute_layout

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(8)))
    assert compute_layout(Settings(), cpu) == (2, 4)
    assert compute_layout(Settings(compute_workers=4), cpu) == (4, 2)
    assert compute_layout(Settings(torch_threads=3), cpu) == (2, 3)
    assert compute_layout(Settings(), cuda) == (1, None)
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0})
    assert compute_layout(Settings(), cpu) == (1, 1)
