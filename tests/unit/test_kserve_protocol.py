"""KServe V2 tensor logic shared by both transports (api/kserve.py) and the Bradley-Terry helper."""

from __future__ import annotations

import math
import struct

import pytest

from rewardserve.api import kserve
from rewardserve.errors import InputError
from rewardserve.scoring.service import Comparison, sigmoid
from rewardserve.scoring.types import ModelInfo, ScoreInput, ScoreOutput

SCALAR = ModelInfo("default", "LlamaForSequenceClassification", "llama", 128, "float32", "cpu", "scalar")
MULTI = ModelInfo(
    "default", "LlamaForSequenceClassification", "llama", 128, "float32", "cpu", "multi_objective", ("h", "c")
)


def _bytes(name: str, *values: str, shape: tuple[int, ...] | None = None) -> kserve.InputTensor:
    data = [v.encode() for v in values]
    return kserve.InputTensor(name, "BYTES", shape or (len(data),), data)


def test_bytes_tensor_round_trip() -> None:
    items = [b"", b"hello", "héllo ✓".encode(), b"\x00\xff" * 300]
    raw = kserve.encode_bytes_tensor(items)
    assert raw[:4] == struct.pack("<I", 0)
    assert kserve.decode_bytes_tensor(raw, "x") == items
    assert kserve.decode_bytes_tensor(b"", "x") == []


@pytest.mark.parametrize("raw", [b"\x05\x00\x00", struct.pack("<I", 9) + b"short"])
def test_truncated_raw_bytes_are_input_errors(raw: bytes) -> None:
    with pytest.raises(InputError, match="input 'prompt'"):
        kserve.decode_bytes_tensor(raw, "prompt")


def test_pairs_and_text_become_inputs() -> None:
    got = kserve.to_inputs([_bytes("prompt", "p1", "p2"), _bytes("response", "r1", "r2", shape=(2, 1))])
    assert got == [ScoreInput(prompt="p1", response="r1"), ScoreInput(prompt="p2", response="r2")]
    assert kserve.to_inputs([_bytes("text", "a", "b")]) == [ScoreInput(text="a"), ScoreInput(text="b")]
    assert kserve.to_inputs([_bytes("text")]) == []


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([_bytes("prompt", "p")], "either 'prompt' and 'response'"),
        ([_bytes("text", "t"), _bytes("prompt", "p"), _bytes("response", "r")], "either"),
        ([_bytes("query", "q")], "unknown input 'query'"),
        ([_bytes("text", "a"), _bytes("text", "b")], "given twice"),
        ([kserve.InputTensor("text", "FP32", (1,), [b"x"])], "datatype BYTES"),
        ([_bytes("text", "a", "b", shape=(1, 2))], r"shape must be \[N\] or \[N, 1\]"),
        ([_bytes("text", "a", "b", shape=(3,))], "but 2 elements"),
        ([_bytes("prompt", "p1", "p2"), _bytes("response", "r1")], "'prompt' has 2 elements"),
        ([kserve.InputTensor("text", "BYTES", (1,), [b"\xff\xfe"])], "not valid UTF-8"),
    ],
)
def test_bad_tensors_say_what_to_send(tensors: list[kserve.InputTensor], message: str) -> None:
    with pytest.raises(InputError, match=message):
        kserve.to_inputs(tensors)


def test_outputs_scalar_and_multi_objective() -> None:
    outs = [ScoreOutput(0.5, (0.25, 0.75), 3, False), ScoreOutput(-1.0, (-2.0, 0.0), 4, True)]
    (score,) = kserve.to_outputs(outs, SCALAR, None)
    assert (score.name, score.datatype, score.shape, score.data) == ("score", "FP32", (2,), [0.5, -1.0])
    assert struct.unpack("<2f", score.raw()) == (0.5, -1.0)
    both = kserve.to_outputs(outs, MULTI, None)
    assert [t.name for t in both] == ["score", "objectives"]
    assert both[1].shape == (2, 2) and both[1].data == [0.25, 0.75, -2.0, 0.0]
    assert [t.name for t in kserve.to_outputs(outs, MULTI, ["objectives"])] == ["objectives"]
    with pytest.raises(InputError, match="unknown output 'objectives'"):
        kserve.to_outputs(outs, SCALAR, ["objectives"])


def test_metadata_lists_inputs_and_outputs() -> None:
    meta = kserve.model_metadata(MULTI)
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        ("prompt", "BYTES", (-1,)),
        ("response", "BYTES", (-1,)),
        ("text", "BYTES", (-1,)),
    ]
    assert [(t.name, t.shape) for t in meta.outputs] == [("score", (-1,)), ("objectives", (-1, 2))]
    assert meta.versions == ("1",)


@pytest.mark.parametrize("x", [-1000.0, -30.0, -1.5, 0.0, 0.3, 12.0, 1000.0])
def test_sigmoid_is_stable(x: float) -> None:
    expected = 1 / (1 + math.exp(-x)) if x > -700 else 0.0
    assert sigmoid(x) == pytest.approx(expected, abs=1e-15)
    assert sigmoid(x) + sigmoid(-x) == pytest.approx(1.0)


def test_comparison_is_bradley_terry() -> None:
    c = Comparison.of(ScoreOutput(2.0, (2.0,), 5, False), ScoreOutput(0.5, (0.5,), 6, False))
    assert c.margin == 1.5 and c.probability == pytest.approx(1 / (1 + math.exp(-1.5)))
