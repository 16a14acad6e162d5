"""KServe V2 / Open Inference Protocol with the stock tritonclient, over gRPC and HTTP, against a real
server over a real tiny reward model: the same scores as /v1/score."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from rewardserve._proto.inference import grpc_service_pb2 as pb
from rewardserve._proto.inference import grpc_service_pb2_grpc as pb_grpc
from rewardserve._proto.rewardserve.v1 import reward_pb2, reward_pb2_grpc
from rewardserve.config import Settings
from rewardserve.testing.server_thread import ServerThread

PAIRS = [("What is 2+2?", "4"), ("Name a colour.", "Blue, like the sky."), ("hi", "hello there")]
TEXTS = ["plain text one", "another raw text, a little longer than the first"]


@pytest.fixture(scope="module")
def srv(tiny_llama: Path) -> Iterator[ServerThread]:
    with ServerThread(Settings(model=tiny_llama, port=0, grpc_port=0, max_input_tokens=256)) as s:
        yield s


@pytest.fixture(scope="module")
def http(srv: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.http_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def triton_grpc(srv: ServerThread) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(srv.grpc_target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def triton_http(srv: ServerThread) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(srv.http_url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def reference(http: httpx.Client) -> tuple[list[float], list[float]]:
    """/v1/score's answers: (pair scores, text scores)."""
    pairs = [{"prompt": p, "response": r} for p, r in PAIRS]
    texts = [{"text": t} for t in TEXTS]
    scores = http.post("/v1/score", json={"inputs": pairs + texts}).json()["scores"]
    return scores[: len(PAIRS)], scores[len(PAIRS) :]


def _bytes_input(module: Any, name: str, values: list[str], shape: list[int] | None = None, **kw: Any) -> Any:
    array = np.array([v.encode() for v in values], dtype=np.object_).reshape(shape or [len(values)])
    tensor = module.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, **kw)
    return tensor


def _pair_inputs(module: Any, **kw: Any) -> list[Any]:
    return [
        _bytes_input(module, "prompt", [p for p, _ in PAIRS], **kw),
        _bytes_input(module, "response", [r for _, r in PAIRS], **kw),
    ]


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


# --------------------------------------------------------------------------- gRPC


def test_grpc_health_and_metadata(triton_grpc: tgrpc.InferenceServerClient) -> None:
    assert triton_grpc.is_server_live() and triton_grpc.is_server_ready()
    assert triton_grpc.is_model_ready("default") and triton_grpc.is_model_ready("default", "1")
    server = triton_grpc.get_server_metadata(as_json=True)
    assert server["name"] == "rewardserve" and "binary_tensor_data" in server["extensions"]
    meta = triton_grpc.get_model_metadata("default", as_json=True)
    assert meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        ("prompt", "BYTES"),
        ("response", "BYTES"),
        ("text", "BYTES"),
    ]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": ["-1"]}]


def test_grpc_infer_matches_v1_score(
    triton_grpc: tgrpc.InferenceServerClient, reference: tuple[list[float], list[float]]
) -> None:
    pair_scores, text_scores = reference
    result = triton_grpc.infer("default", _pair_inputs(tgrpc), request_id="req-1", client_timeout=60)
    score = result.as_numpy("score")
    assert score.dtype == np.float32 and score.shape == (len(PAIRS),)
    assert score.tolist() == pytest.approx(pair_scores, rel=1e-6, abs=1e-6)
    assert result.get_response().id == "req-1" and result.get_response().model_version == "1"

    texts = _bytes_input(tgrpc, "text", TEXTS, shape=[len(TEXTS), 1])  # [N, 1] is accepted too
    result = triton_grpc.infer("default", [texts], outputs=[tgrpc.InferRequestedOutput("score")])
    assert result.as_numpy("score").tolist() == pytest.approx(text_scores, rel=1e-6, abs=1e-6)


def test_grpc_truncate_parameter(triton_grpc: tgrpc.InferenceServerClient) -> None:
    long = [
        _bytes_input(tgrpc, "prompt", ["story"]),
        _bytes_input(tgrpc, "response", [" ".join(["w"] * 600)]),
    ]
    with pytest.raises(InferenceServerException) as info:
        triton_grpc.infer("default", long)
    assert _status(info.value) == "StatusCode.INVALID_ARGUMENT" and "truncate" in info.value.message()
    result = triton_grpc.infer("default", long, parameters={"truncate": True})
    assert result.as_numpy("score").shape == (1,)


def test_typed_contents_in_typed_contents_out(
    srv: ServerThread, reference: tuple[list[float], list[float]]
) -> None:
    """A client that sends contents.bytes_contents (not raw) gets contents.fp32_contents back."""
    request = pb.ModelInferRequest(model_name="default", id="typed")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
    tensor.contents.bytes_contents.extend(t.encode() for t in TEXTS)
    with grpc.insecure_channel(srv.grpc_target) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        assert not reply.raw_output_contents
        (out,) = reply.outputs
        assert (out.name, out.datatype, list(out.shape)) == ("score", "FP32", [len(TEXTS)])
        assert list(out.contents.fp32_contents) == pytest.approx(reference[1], rel=1e-6, abs=1e-6)
        request.raw_input_contents.append(b"")  # raw for one input while another uses contents
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_errors(triton_grpc: tgrpc.InferenceServerClient) -> None:
    cases = [
        (lambda: triton_grpc.infer("nope", _pair_inputs(tgrpc)), "StatusCode.NOT_FOUND", "'nope'"),
        (
            lambda: triton_grpc.infer("default", _pair_inputs(tgrpc), model_version="7"),
            "NOT_FOUND",
            "version",
        ),
        (lambda: triton_grpc.is_model_ready("nope"), "NOT_FOUND", "'nope'"),
        (lambda: triton_grpc.get_model_metadata("nope"), "NOT_FOUND", "'nope'"),
        (
            lambda: triton_grpc.infer("default", [_bytes_input(tgrpc, "query", ["x"])]),
            "INVALID_ARGUMENT",
            "unknown input 'query'",
        ),
        (
            lambda: triton_grpc.infer("default", _pair_inputs(tgrpc)[:1]),
            "INVALID_ARGUMENT",
            "'prompt' and 'response'",
        ),
        # Triton extensions outside the KServe core are not served.
        (lambda: triton_grpc.get_model_config("default"), "UNIMPLEMENTED", ""),
        (lambda: triton_grpc.get_inference_statistics(), "UNIMPLEMENTED", ""),
    ]
    for call, status, message in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert _status(info.value).endswith(status) and message in info.value.message()


# --------------------------------------------------------------------------- HTTP


def test_http_health_and_metadata(triton_http: thttp.InferenceServerClient) -> None:
    assert triton_http.is_server_live() and triton_http.is_server_ready()
    assert triton_http.is_model_ready("default") and not triton_http.is_model_ready("nope")
    assert triton_http.get_server_metadata()["name"] == "rewardserve"
    meta = triton_http.get_model_metadata("default")
    assert [t["name"] for t in meta["inputs"]] == ["prompt", "response", "text"]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    assert triton_http.get_model_metadata("default", model_version="1") == meta


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_infer_matches_v1_score(
    triton_http: thttp.InferenceServerClient, reference: tuple[list[float], list[float]], binary: bool
) -> None:
    pair_scores, text_scores = reference
    outputs = [thttp.InferRequestedOutput("score", binary_data=binary)]
    result = triton_http.infer("default", _pair_inputs(thttp, binary_data=binary), outputs=outputs)
    assert result.as_numpy("score").tolist() == pytest.approx(pair_scores, rel=1e-6, abs=1e-6)
    assert ("binary_data_size" in result.get_output("score").get("parameters", {})) is binary
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    result = triton_http.infer("default", [_bytes_input(thttp, "text", TEXTS, binary_data=binary)])
    assert result.as_numpy("score").tolist() == pytest.approx(text_scores, rel=1e-6, abs=1e-6)


def test_http_v2_json_by_hand(http: httpx.Client, reference: tuple[list[float], list[float]]) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2").json()["extensions"] == ["binary_tensor_data", "parameters"]
    assert http.get("/v2/models/default").json()["platform"] == "rewardserve_transformers"
    assert http.get("/v2/models/default/ready").json() == {"name": "default", "ready": True}
    body = {
        "id": "abc",
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [[TEXTS[0]], [TEXTS[1]]]}],
    }
    r = http.post("/v2/models/default/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["id"], data["model_name"], data["model_version"]) == ("abc", "default", "1")
    (out,) = data["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("score", "FP32", [2])
    assert out["data"] == pytest.approx(reference[1], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", {"inputs": []}, 404, "'nope'"),
        (
            "/v2/models/default/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]},
            422,
            "data",
        ),
        (
            "/v2/models/default/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [1]}]},
            422,
            "must be strings",
        ),
        ("/v2/models/default/infer", {"inputs": [], "bogus": 1}, 422, "bogus"),
        (
            "/v2/models/default/infer",
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}],
                "outputs": [{"name": "y"}],
            },
            422,
            "unknown output 'y'",
        ),
    ],
)
def test_http_v2_errors(
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: dict[str, Any],
    status: int,
    message: str,
) -> None:
    r = http.post(path, json=body)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert set(r.json()) == {"error", "type"}
    # An expected error is an answer, not a crash: no traceback logged, and the keep-alive connection
    # stays usable (uvicorn closes it after an unhandled exception).
    assert "Exception in ASGI application" not in caplog.text
    assert http.get("/v2/health/live").status_code == 200


def test_http_binary_data_is_checked(http: httpx.Client) -> None:
    header = (
        b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":99}}]}'
    )
    r = http.post(
        "/v2/models/default/infer",
        content=header + b"\x01\x00\x00\x00x",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 422 and "binary_data_size" in r.json()["error"]


# --------------------------------------------------------------------------- multi-objective


def test_multi_objective_outputs(tiny_multi: Path) -> None:
    with ServerThread(Settings(model=tiny_multi, port=0, grpc_port=0)) as srv:
        inputs = [{"prompt": p, "response": r} for p, r in PAIRS]
        want = httpx.post(f"{srv.http_url}/v1/score", json={"inputs": inputs}, timeout=60).json()
        objectives = [list(d["objectives"].values()) for d in want["details"]]
        client = tgrpc.InferenceServerClient(srv.grpc_target)
        try:
            meta = client.get_model_metadata("default", as_json=True)
            assert [o["name"] for o in meta["outputs"]] == ["score", "objectives"]
            result = client.infer("default", _pair_inputs(tgrpc))
            assert result.as_numpy("score").tolist() == pytest.approx(want["scores"], rel=1e-6, abs=1e-6)
            got = result.as_numpy("objectives")
            assert got.shape == (len(PAIRS), 3)
            assert got.tolist() == [pytest.approx(row, rel=1e-6, abs=1e-6) for row in objectives]
        finally:
            client.close()
        with grpc.insecure_channel(srv.grpc_target) as channel:
            native = reward_pb2_grpc.RewardServiceStub(channel).Score(
                reward_pb2.ScoreRequest(inputs=[reward_pb2.Input(prompt=p, response=r) for p, r in PAIRS]),
                timeout=60,
            )
        assert [dict(d.objectives) for d in native.details] == [
            pytest.approx(d["objectives"], abs=1e-6) for d in want["details"]
        ]
