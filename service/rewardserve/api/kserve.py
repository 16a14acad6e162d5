"""KServe V2 / Open Inference Protocol logic shared by the gRPC and HTTP transports.

The transports only translate their wire format (protobuf messages; JSON plus the binary-data
extension) into ``InputTensor`` lists and back from ``OutputTensor`` lists; everything the protocol
means for a reward model is decided here, once:

* inputs: BYTES tensors ``prompt`` and ``response`` (scored through the chat template), or ``text``
  (scored as given), shape [N] (or [N, 1]); UTF-8.
* outputs: FP32 ``score``, shape [N]; a multi-objective head adds FP32 ``objectives``, shape [N, K]
  (K = the model's objectives, in ModelMetadata order).
* request parameter ``truncate`` (bool): cut too-long inputs instead of refusing them.
* one model version, "1"; an empty version means it.
* every registry entry is a model here, under its name (ensembles and composites too: FP32 ``score``
  is what their ``scores`` hold); an empty name is the default entry.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from rewardserve import __version__
from rewardserve.api import routing
from rewardserve.errors import InputError, ModelNotFound
from rewardserve.runtime import Runtime
from rewardserve.scoring.types import RewardResult, ScoreInput
from rewardserve.sources.base import RewardSource

SERVER_NAME = "rewardserve"
MODEL_VERSION = "1"
PLATFORM = "rewardserve_transformers"
BYTES = "BYTES"
FP32 = "FP32"
# binary_tensor_data: the HTTP binary extension (tritonclient.http's default). parameters: request
# parameters are read (``truncate``).
EXTENSIONS = ("binary_tensor_data", "parameters")
INPUT_NAMES = ("prompt", "response", "text")
SCORE = "score"
OBJECTIVES = "objectives"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class InputTensor:
    """One decoded request tensor: BYTES elements, flattened in row-major order."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[bytes]


@dataclass(frozen=True)
class OutputTensor:
    """One response tensor: FP32 values, flattened in row-major order."""

    name: str
    shape: tuple[int, ...]
    data: list[float] = field(default_factory=list)
    datatype: str = FP32

    def raw(self) -> bytes:
        """Little-endian FP32, the layout of raw_output_contents and HTTP binary data."""
        return struct.pack(f"<{len(self.data)}f", *self.data)


def server_metadata() -> tuple[str, str, tuple[str, ...]]:
    """(name, version, extensions)."""
    return SERVER_NAME, __version__, EXTENSIONS


def objectives_of(source: RewardSource) -> list[str]:
    """The named head outputs of an entry (a multi-objective model's; none for other entries)."""
    return list(source.card().get("objectives") or [])


def output_specs(source: RewardSource) -> tuple[TensorSpec, ...]:
    specs = [TensorSpec(SCORE, FP32, (-1,))]
    objectives = objectives_of(source)
    if objectives:
        specs.append(TensorSpec(OBJECTIVES, FP32, (-1, len(objectives))))
    return tuple(specs)


def model_metadata(source: RewardSource) -> ModelMetadata:
    """Inputs are listed all three: give {prompt, response} or {text}."""
    inputs = tuple(TensorSpec(name, BYTES, (-1,)) for name in INPUT_NAMES)
    return ModelMetadata(source.name, (MODEL_VERSION,), PLATFORM, inputs, output_specs(source))


def check_model(runtime: Runtime, name: str, version: str) -> RewardSource:
    """The registry entry called ``name`` ("" = the default), or ModelNotFound / NotReady."""
    source = routing.resolve(runtime, name)
    if version not in ("", MODEL_VERSION):
        raise ModelNotFound(f"model {name!r} has no version {version!r}; versions: [{MODEL_VERSION!r}]")
    return source


def model_ready(runtime: Runtime, name: str, version: str) -> bool:
    """True when the model is loaded and the server is not draining; ModelNotFound if unknown."""
    if not runtime.ready:
        return False
    check_model(runtime, name, version)
    return True


def decode_bytes_tensor(raw: bytes, name: str) -> list[bytes]:
    """Split raw BYTES data: each element is a 4-byte little-endian length, then that many bytes."""
    out: list[bytes] = []
    view = memoryview(raw)
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise InputError(f"input {name!r}: raw BYTES data ends inside a 4-byte length prefix")
        (size,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + size > len(view):
            raise InputError(f"input {name!r}: raw BYTES element of {size} bytes runs past the data")
        out.append(bytes(view[pos : pos + size]))
        pos += size
    return out


def encode_bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def element_count(shape: tuple[int, ...], name: str) -> int:
    if any(d < 0 for d in shape):
        raise InputError(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def to_inputs(tensors: list[InputTensor]) -> list[ScoreInput]:
    """Request tensors -> one ScoreInput per row. Raises InputError with what to send instead."""
    by_name: dict[str, InputTensor] = {}
    for t in tensors:
        if t.name not in INPUT_NAMES:
            raise InputError(
                f"unknown input {t.name!r}; send BYTES inputs 'prompt' and 'response', or 'text'"
            )
        if t.name in by_name:
            raise InputError(f"input {t.name!r} is given twice")
        if t.datatype != BYTES:
            raise InputError(f"input {t.name!r} must have datatype BYTES, not {t.datatype!r}")
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
            raise InputError(f"input {t.name!r}: shape must be [N] or [N, 1], got {list(t.shape)}")
        if element_count(t.shape, t.name) != len(t.data):
            raise InputError(f"input {t.name!r}: shape {list(t.shape)} but {len(t.data)} elements")
        by_name[t.name] = t
    names = set(by_name)
    if names == {"text"}:
        return [ScoreInput(text=_utf8(x, "text", i)) for i, x in enumerate(by_name["text"].data)]
    if names == {"prompt", "response"}:
        prompts, responses = by_name["prompt"].data, by_name["response"].data
        if len(prompts) != len(responses):
            raise InputError(f"'prompt' has {len(prompts)} elements but 'response' has {len(responses)}")
        return [
            ScoreInput(prompt=_utf8(p, "prompt", i), response=_utf8(r, "response", i))
            for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
        ]
    raise InputError(
        f"got inputs {sorted(names)}; send either 'prompt' and 'response' (both BYTES, shape [N]) or 'text'"
    )


def _utf8(value: bytes, name: str, index: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"input {name!r}[{index}] is not valid UTF-8") from None


def to_outputs(
    outputs: list[RewardResult], source: RewardSource, requested: list[str] | None
) -> list[OutputTensor]:
    """The requested output tensors (all of them when ``requested`` is None or empty). A masked
    input's score is NaN (FP32 has no null)."""
    specs = output_specs(source)
    available = {spec.name for spec in specs}
    names = list(requested) if requested else [spec.name for spec in specs]
    for name in names:
        if name not in available:
            raise InputError(f"unknown output {name!r}; this model has {sorted(available)}")
    tensors = []
    for name in names:
        if name == SCORE:
            scores = [math.nan if o.score is None else o.score for o in outputs]
            tensors.append(OutputTensor(SCORE, (len(outputs),), scores))
        else:
            k = len(objectives_of(source))
            values = [v for o in outputs for v in (o.values or (math.nan,) * k)]
            tensors.append(OutputTensor(OBJECTIVES, (len(outputs), k), values))
    return tensors


async def infer(
    runtime: Runtime,
    model: str,
    version: str,
    tensors: list[InputTensor],
    requested: list[str] | None,
    *,
    truncate: bool = False,
    timeout: float | None = None,
) -> tuple[str, list[OutputTensor]]:
    """One ModelInfer: check the model, decode, score through the shared service, encode.
    Returns (served model name, output tensors)."""
    source = check_model(runtime, model, version)
    inputs = to_inputs(tensors)
    _, outputs = await routing.score(
        runtime, source.name, inputs, routing.options(truncate=truncate, timeout=timeout)
    )
    return source.name, to_outputs(outputs, source, requested)
