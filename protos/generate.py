"""Generate the Python code for protos/ into service/rewardserve/_proto (``make proto``).

    python protos/generate.py [--out DIR]

Runs ``python -m grpc_tools.protoc`` (--python_out, --grpc_python_out, --pyi_out) on every .proto
under protos/, then post-processes the output so it can live inside our package:

* Imports. protoc writes imports that follow the proto path (``from rewardserve.v1 import
  reward_pb2``), which would resolve against our top-level package ``rewardserve`` (and ``inference``
  against nothing). They are rewritten to ``from rewardserve._proto.rewardserve.v1 import ...``: the
  tree under _proto/ mirrors protos/.
* A private descriptor pool for ``inference.*``. tritonclient registers the same KServe message
  names (``inference.ModelInferRequest``, ...) in protobuf's default pool from its own file, and the
  default pool refuses a second definition of a name ("duplicate symbol"), so one process could not
  import both. Our KServe code registers in ``rewardserve._proto.KSERVE_POOL`` instead; the wire
  format is unaffected (names of messages never travel, only the method path does).

The output is deterministic; tests/unit/test_proto.py regenerates into a temp dir and fails if the
checked-in code differs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "service" / "rewardserve" / "_proto"
PACKAGE = "rewardserve._proto"
PRIVATE_POOL_PACKAGES = ("inference",)  # top-level proto packages registered in KSERVE_POOL

_GENERATED = "# Generated from protos/ by `make proto` (protos/generate.py). Do not edit.\n"
_ROOT_INIT = (
    '"""Code generated from protos/ by `make proto` (protos/generate.py); do not edit by hand."""\n'
    "\n"
    "from google.protobuf import descriptor_pool\n"
    "\n"
    "# inference.* (KServe V2) lives in its own pool: tritonclient defines the same names in the\n"
    "# default pool, which refuses duplicates. See protos/generate.py.\n"
    "KSERVE_POOL = descriptor_pool.DescriptorPool()\n"
)


def _top_packages(protos: Path) -> list[str]:
    return sorted(p.name for p in protos.iterdir() if p.is_dir() and any(p.rglob("*.proto")))


def _rewrite(text: str, top: list[str], private: bool) -> str:
    names = "|".join(re.escape(t) for t in top)
    text = re.sub(rf"^from ({names})((?:\.\w+)*) import ", rf"from {PACKAGE}.\1\2 import ", text, flags=re.M)
    text = re.sub(rf"^import ({names})((?:\.\w+)+)", rf"import {PACKAGE}.\1\2", text, flags=re.M)
    if private:
        if "_descriptor_pool.Default()" not in text:
            raise RuntimeError("protoc output changed: no `_descriptor_pool.Default()` to replace")
        text = text.replace("_descriptor_pool.Default()", "_KSERVE_POOL")
        text = text.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool\n",
            "from google.protobuf import descriptor_pool as _descriptor_pool\n"
            f"from {PACKAGE} import KSERVE_POOL as _KSERVE_POOL\n",
            1,
        )
    return text


def generate(out: Path, protos: Path = HERE) -> list[Path]:
    """Generate into ``out`` (replacing the .py/.pyi files there); returns the files written."""
    files = sorted(p.relative_to(protos).as_posix() for p in protos.rglob("*.proto"))
    top = _top_packages(protos)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{protos}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--pyi_out={tmp}",
            *files,
        ]
        subprocess.run(cmd, check=True, cwd=protos)
        raw = Path(tmp)
        generated: dict[Path, str] = {Path("__init__.py"): _ROOT_INIT}
        for path in sorted(raw.rglob("*")):
            if path.is_file():
                rel = path.relative_to(raw)
                private = rel.parts[0] in PRIVATE_POOL_PACKAGES and path.name.endswith("_pb2.py")
                generated[rel] = _rewrite(path.read_text(), top, private)
                for parent in rel.parents:
                    if parent != Path("."):
                        generated.setdefault(parent / "__init__.py", _GENERATED)
    if out.exists():
        for old in [*out.rglob("*.py"), *out.rglob("*.pyi")]:
            old.unlink()
        for cache in list(out.rglob("__pycache__")):
            shutil.rmtree(cache, ignore_errors=True)
    written = []
    for rel, text in sorted(generated.items()):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = ap.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
