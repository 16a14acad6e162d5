"""The compute layer imports with torch + transformers alone.

A GPU host (the device check, bench/bench_gpu.py's engine rows) has torch and transformers but no
pydantic, fastapi or uvicorn unless the carried wheels are installed; the engine, packing, the fused
CPU forward and the benchmark's module-level imports must not need them. Blocked in a subprocess, as
the client's no-torch test (tests/integration/test_client.py) does for torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from rewardserve.scoring import packing

ROOT = Path(__file__).resolve().parents[2]

_BLOCKED_IMPORTS = r"""
import importlib.abc, json, sys

BLOCKED = {"pydantic", "pydantic_settings", "pydantic_core", "fastapi", "starlette", "uvicorn"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)  # as when absent
        return None

sys.meta_path.insert(0, Blocker())
import rewardserve.scoring.engine, rewardserve.scoring.packing, rewardserve.scoring.fused
import rewardserve.scoring.fused_stack, rewardserve.scoring.types, rewardserve.scoring.batcher
sys.path.insert(0, sys.argv[1])
import bench_gpu  # its module-level imports: the engine rows run without the carried wheels
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)))
"""


def test_engine_and_bench_gpu_import_without_pydantic_fastapi_uvicorn() -> None:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "service"), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORTS, str(ROOT / "bench")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_packed_attention_uses_the_varlen_kernel_only_for_cuda_half_precision() -> None:
    """FlashAttention's varlen kernel takes fp16/bf16 only: fp32 on CUDA (and any CPU call) takes the
    exact per-sequence path instead of crashing in the kernel."""
    assert packing.use_varlen_kernel("cuda", torch.bfloat16, available=True)
    assert packing.use_varlen_kernel("cuda", torch.float16, available=True)
    assert not packing.use_varlen_kernel("cuda", torch.float32, available=True)
    assert not packing.use_varlen_kernel("cuda", torch.float64, available=True)
    assert not packing.use_varlen_kernel("cpu", torch.bfloat16, available=True)
    assert not packing.use_varlen_kernel("cpu", torch.float32, available=True)
    assert not packing.use_varlen_kernel("cuda", torch.bfloat16, available=False)  # a torch without varlen


def test_packed_attention_on_cpu_equals_per_sequence_causal_sdpa() -> None:
    """The fallback the dispatch picks for fp32: each sequence attends to itself only, causally."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 7, 8) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # GQA: 4 query heads over 2 kv heads
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out, _ = packing.varlen_attention(
        torch.nn.Module(), q, k, v, None, scaling=None, **{packing.CU_SEQLENS_KW: cu, packing.MAX_LEN_KW: 4}
    )
    for s, e in ((0, 3), (3, 7)):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, enable_gqa=True
        )
        torch.testing.assert_close(out[0, s:e], ref[0].transpose(0, 1))
