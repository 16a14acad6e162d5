"""The checked-in generated code matches protos/, and our KServe proto matches the real spec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "service" / "rewardserve" / "_proto"


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".py", ".pyi")
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    # The same script `make proto` runs, into a temp dir: any drift (an edited .proto without
    # regenerating, a hand-edited _pb2, another grpcio-tools) fails here.
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh, checked_in = _tree(tmp_path), _tree(CHECKED_IN)
    assert sorted(fresh) == sorted(checked_in), "run `make proto` and commit the result"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"out of date (run `make proto`): {stale}"


def _fields(message: Any) -> dict[str, tuple[int, int, bool, str | None]]:
    return {
        f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None)
        for f in message.fields
    }


def _compare_message(ours: Any, theirs: Any) -> None:
    assert ours.full_name == theirs.full_name
    assert _fields(ours) == _fields(theirs), ours.full_name
    nested = {n.name: n for n in theirs.nested_types}
    for sub in ours.nested_types:
        _compare_message(sub, nested[sub.name])


def test_kserve_proto_matches_tritonclient() -> None:
    """Every message and RPC we declare is wire-identical to the one in tritonclient's compiled
    grpc_service.proto (the spec as NVIDIA ships it to every tritonclient user)."""
    from tritonclient.grpc import service_pb2 as triton

    from rewardserve._proto.inference import grpc_service_pb2 as ours

    assert ours.DESCRIPTOR.package == triton.DESCRIPTOR.package == "inference"
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        _compare_message(message, triton.DESCRIPTOR.message_types_by_name[name])
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (False, False)


@pytest.mark.parametrize("first", ["tritonclient", "rewardserve"])
def test_importable_next_to_tritonclient(first: str) -> None:
    # Both define inference.* messages; ours live in a private descriptor pool, so either import
    # order works in one process (the default pool would refuse the second: "duplicate symbol").
    imports = {
        "tritonclient": "import tritonclient.grpc",
        "rewardserve": "import rewardserve._proto.inference.grpc_service_pb2_grpc",
    }
    order = [imports[first], *(v for k, v in imports.items() if k != first)]
    subprocess.run([sys.executable, "-c", "; ".join(order)], check=True, capture_output=True, timeout=120)
