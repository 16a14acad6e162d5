"""Checks a policy checkpoint before its weights are loaded into the running engine.

vLLM's in-place reload copies tensors by name into the live model: a missing tensor is skipped with a
warning (the model ends up half old, half new) and a wrong shape fails inside the worker after other
layers were already overwritten. So a checkpoint is accepted only when its safetensors headers name
exactly the tensors of the served one, with the same shapes. Reading headers costs no tensor I/O.

Messages never contain the path: a client sees them.
"""

from __future__ import annotations

from pathlib import Path

from rewardserve.errors import InputError
from rewardserve.naming import setting_name

TensorShapes = dict[str, tuple[int, ...]]


def tensor_shapes(path: Path) -> TensorShapes:
    """Name -> shape of every tensor in the directory's ``*.safetensors`` files (shards included)."""
    from safetensors import safe_open

    shapes: TensorShapes = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def check_checkpoint(path: Path, reference: TensorShapes) -> None:
    """Raise InputError (422) unless ``path`` holds safetensors weights shaped like ``reference``."""
    if not path.is_dir():
        raise InputError("weights path is not a directory on the server")
    if not any(path.glob("*.safetensors")):
        raise InputError("weights path holds no *.safetensors files (other weight formats are refused)")
    try:
        shapes = tensor_shapes(path)
    except Exception as exc:  # a truncated or foreign file: say so without the path
        raise InputError(f"weights could not be read as safetensors ({type(exc).__name__})") from None
    missing = sorted(set(reference) - set(shapes))
    extra = sorted(set(shapes) - set(reference))
    wrong = sorted(n for n in set(shapes) & set(reference) if shapes[n] != reference[n])
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unknown tensors (e.g. {extra[0]})")
    if wrong:
        name = wrong[0]
        problems.append(f"{len(wrong)} shape mismatches (e.g. {name}: {shapes[name]} != {reference[name]})")
    if problems:
        raise InputError(
            "checkpoint does not match the served policy's architecture: "
            + "; ".join(problems)
            + ". Reload a checkpoint of the same model (same config), or restart with "
            + f"{setting_name('generator')} set to the new model."
        )
