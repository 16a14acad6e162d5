"""KServe V2 over gRPC (``inference.GRPCInferenceService``): protobuf <-> api/kserve.py tensors.

Data comes either typed (``contents.bytes_contents``) or raw (``raw_input_contents``, what
tritonclient sends). The answer uses the same form as the request: raw in, raw out (what
tritonclient reads); typed in, typed ``fp32_contents`` out.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc.aio

from rewardserve._proto.inference import grpc_service_pb2 as pb
from rewardserve._proto.inference import grpc_service_pb2_grpc as pb_grpc
from rewardserve.api import kserve
from rewardserve.api.grpc.status import time_left
from rewardserve.errors import InputError
from rewardserve.runtime import Runtime

# grpc ships no type hints: this documents what the handlers get.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _input_tensors(request: pb.ModelInferRequest) -> tuple[list[kserve.InputTensor], bool]:
    """(tensors, raw): decode every input, from raw_input_contents when the request uses them."""
    raw = len(request.raw_input_contents) > 0
    if raw and len(request.raw_input_contents) != len(request.inputs):
        raise InputError(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for {len(request.inputs)} "
            "inputs; give one per input, or none and use contents"
        )
    tensors = []
    for i, t in enumerate(request.inputs):
        if raw:
            if t.HasField("contents"):
                raise InputError(f"input {t.name!r} has contents although raw_input_contents is used")
            data = kserve.decode_bytes_tensor(request.raw_input_contents[i], t.name)
        else:
            data = list(t.contents.bytes_contents)
        tensors.append(kserve.InputTensor(t.name, t.datatype, tuple(t.shape), data))
    return tensors, raw


def _truncate(request: pb.ModelInferRequest) -> bool:
    param = request.parameters.get("truncate")
    if param is None:
        return False
    if param.WhichOneof("parameter_choice") != "bool_param":
        raise InputError("parameter 'truncate' must be a bool")
    return bool(param.bool_param)


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six core RPCs of the Open Inference Protocol."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.runtime.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=kserve.model_ready(self.runtime, request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        name, version, extensions = kserve.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=list(extensions))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        meta = kserve.model_metadata(kserve.check_model(self.runtime, request.name, request.version))
        spec = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=list(meta.versions),
            platform=meta.platform,
            inputs=[spec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.inputs],
            outputs=[spec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.outputs],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        tensors, raw = _input_tensors(request)
        model, outputs = await kserve.infer(
            self.runtime,
            request.model_name,
            request.model_version,
            tensors,
            [o.name for o in request.outputs],
            truncate=_truncate(request),
            timeout=time_left(context),
        )
        response = pb.ModelInferResponse(model_name=model, model_version=kserve.MODEL_VERSION, id=request.id)
        for out in outputs:
            tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=list(out.shape))
            if raw:
                response.raw_output_contents.append(out.raw())
            else:
                tensor.contents.fp32_contents.extend(out.data)
        return response
