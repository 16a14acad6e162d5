"""KServe V2 / Open Inference Protocol over HTTP, under /v2 (what tritonclient.http calls).

JSON bodies, plus the binary tensor data extension, which tritonclient.http uses by default: the
request body is the JSON header (``Inference-Header-Content-Length`` bytes) followed by raw tensor
data for each input whose parameters carry ``binary_data_size``; an output asked for with
``binary_data: true`` (or every output, with request parameter ``binary_data_output: true``) comes
back the same way. Protocol meaning lives in api/kserve.py, shared with gRPC; errors go through the
app's handler (``{"error": ..., "type": ...}``; tritonclient reads ``error``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from rewardserve.api import kserve
from rewardserve.api.http.cancel import unless_disconnected
from rewardserve.api.http.deps import RuntimeDep
from rewardserve.api.schemas import validation_message
from rewardserve.errors import InputError
from rewardserve.runtime import Runtime

router = APIRouter()

HEADER_LENGTH = "Inference-Header-Content-Length"


class _TensorIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = {}
    data: Any = None


class _OutputIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    parameters: dict[str, Any] = {}


class _InferIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str | None = None
    parameters: dict[str, Any] = {}
    inputs: list[_TensorIn]
    outputs: list[_OutputIn] | None = None


def _flat_strings(data: Any, name: str) -> list[bytes]:
    """JSON BYTES data: strings, possibly nested by shape (row-major)."""
    if not isinstance(data, list):
        raise InputError(f"input {name!r}: data must be a list of strings")
    out: list[bytes] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            raise InputError(f"input {name!r}: BYTES data must be strings, got {type(item).__name__}")
    return out


_END = object()


def _parse(body: bytes, header_length: str | None) -> tuple[_InferIn, list[kserve.InputTensor]]:
    """Split JSON header and binary data; decode every input tensor."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InputError(f"{HEADER_LENGTH} must be a byte count within the body, got {header_length!r}")
        body, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        doc = json.loads(body)
    except ValueError:
        raise InputError("request body is not valid JSON") from None
    try:
        request = _InferIn.model_validate(doc)
    except ValidationError as exc:
        raise InputError(validation_message(exc)) from None
    tensors = []
    offset = 0
    for t in request.inputs:
        size = t.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InputError(f"input {t.name!r}: binary_data_size {size!r} does not fit the binary data")
            if t.data is not None:
                raise InputError(f"input {t.name!r} has both data and binary_data_size")
            chunk = binary[offset : offset + size]
            offset += size
            data = kserve.decode_bytes_tensor(chunk, t.name) if t.datatype == kserve.BYTES else []
        else:
            data = _flat_strings(t.data, t.name) if t.datatype == kserve.BYTES else []
        tensors.append(kserve.InputTensor(t.name, t.datatype, tuple(t.shape), data))
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request, tensors


def _bool_param(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InputError(f"parameter {key!r} must be true or false")
    return value


def _metadata(runtime: Runtime, name: str, version: str) -> dict[str, Any]:
    meta = kserve.model_metadata(kserve.check_model(runtime, name, version))
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs],
    }


def _ready(runtime: Runtime, name: str, version: str) -> JSONResponse:
    ready = kserve.model_ready(runtime, name, version)
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


async def _infer(runtime: Runtime, request: Request, name: str, version: str) -> Response:
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise InputError("compressed request bodies are not supported; send the body uncompressed")
    body, tensors = _parse(await request.body(), request.headers.get(HEADER_LENGTH))
    wanted = body.outputs or []
    binary_default = _bool_param(body.parameters, "binary_data_output")
    work = kserve.infer(
        runtime,
        name,
        version,
        tensors,
        [o.name for o in wanted],
        truncate=_bool_param(body.parameters, "truncate"),
    )
    model, outputs = await unless_disconnected(request, work)
    binary_for = {
        o.name: _bool_param(o.parameters, "binary_data") for o in wanted if "binary_data" in o.parameters
    }
    doc: dict[str, Any] = {"model_name": model, "model_version": kserve.MODEL_VERSION}
    if body.id is not None:
        doc["id"] = body.id
    chunks: list[bytes] = []
    doc["outputs"] = []
    for out in outputs:
        tensor: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if binary_for.get(out.name, binary_default):
            raw = out.raw()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = out.data
        doc["outputs"].append(tensor)
    if not chunks:
        return JSONResponse(doc)
    header = json.dumps(doc, separators=(",", ":")).encode()
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(runtime: RuntimeDep) -> JSONResponse:
    is_ready = runtime.ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    name, version, extensions = kserve.server_metadata()
    return {"name": name, "version": version, "extensions": list(extensions)}


@router.get("/v2/models/{name}")
async def model_metadata(runtime: RuntimeDep, name: str) -> dict[str, Any]:
    return _metadata(runtime, name, "")


@router.get("/v2/models/{name}/versions/{version}")
async def model_version_metadata(runtime: RuntimeDep, name: str, version: str) -> dict[str, Any]:
    return _metadata(runtime, name, version)


@router.get("/v2/models/{name}/ready")
async def model_ready(runtime: RuntimeDep, name: str) -> JSONResponse:
    return _ready(runtime, name, "")


@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_version_ready(runtime: RuntimeDep, name: str, version: str) -> JSONResponse:
    return _ready(runtime, name, version)


@router.post("/v2/models/{name}/infer")
async def infer(runtime: RuntimeDep, request: Request, name: str) -> Response:
    return await _infer(runtime, request, name, "")


@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer_version(runtime: RuntimeDep, request: Request, name: str, version: str) -> Response:
    return await _infer(runtime, request, name, version)
