"""bench/device_check.sh dry-runs here: without CUDA it must reach the benchmark's --smoke path,
write everything to $OUT and exit 0 (the GPU run in issue 14 runs the same script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_device_check_dry_run_reaches_the_smoke_benchmark(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA host runs the real device check, not the dry run")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, WHEELS=str(tmp_path / "no-wheels"))
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "device_check.sh")],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    log = (out / "device_check.log").read_text()
    assert "no CUDA device: bench/bench_gpu.py --smoke" in log and "failed: none" in log
    assert "varlen_attn" in log and "tests/cuda" in log
    smoke = json.loads((out / "bench_gpu_smoke.json").read_text())
    assert smoke["smoke"] is True and smoke["verdict"] == "PASS"
    rows = smoke["results"][0]
    for name in ("one_at_a_time", "padded_16", "sorted_budget", "packed", "packed_compile", "server"):
        assert rows[name]["tok_s"] > 0, (name, rows[name])
        assert rows[name]["check"]["pair_agreement"] >= 0.99
    assert (out / "cuda_tests.xml").exists()
