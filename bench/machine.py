"""What machine a benchmark ran on: CPU model and the vector extensions the kernels can use.

CPU throughput here depends on them more than on the core count: the fused CPU forward (oneDNN) was
~2.2x the transformers forward on an AVX-512 machine but 1.06x on an AVX2-only AMD EPYC, and that
EPYC ran the whole scoring table 3.5x slower. So every bench script prints ``machine_line()`` above
its table and stores ``machine_info()`` in its JSON, and figures quoted in the README name the CPU kind.

Run alone (``python bench/machine.py``) it prints the line and the JSON: a quick check of what a
benchmark on this machine would report, without running one.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> the name people use. Ordered from oldest to newest extension.
_VECTOR_FLAGS = {
    "avx2": "AVX2",
    "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512-VNNI",
    "avx512_bf16": "AVX-512-BF16",
    "avx512_fp16": "AVX-512-FP16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; empty off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / arm64
            flags = set(value.split())
        if model and flags:
            break
    return model, flags


def _torch_capability() -> str | None:
    """The kernel set PyTorch's CPU dispatch picked here (e.g. AVX512, AVX2), if torch is installed."""
    try:
        import torch

        capability: str = torch.backends.cpu.get_cpu_capability()
        return capability
    except Exception:  # no torch, or an old one without the probe: the flags still tell the story
        return None


def machine_info() -> dict[str, Any]:
    model, flags = _cpuinfo()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "vector_extensions": [name for flag, name in _VECTOR_FLAGS.items() if flag in flags],
        "torch_cpu_capability": _torch_capability(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    ext = ", ".join(info["vector_extensions"]) or "no AVX2/AVX-512/AMX"
    torch_cap = f"; torch kernels {info['torch_cpu_capability']}" if info["torch_cpu_capability"] else ""
    return f"CPU: {info['cpu']} ({info['cores']} cores; {ext}{torch_cap})"


if __name__ == "__main__":
    details = machine_info()
    print(machine_line(details))
    print(json.dumps(details, indent=2))
