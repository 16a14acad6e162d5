"""Calibration reads the same input shapes as /v1/score, one JSON object per line (no model here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewardserve.calibrate import parse_input, read_inputs
from rewardserve.errors import InputError
from rewardserve.scoring.types import Message, ScoreInput


def test_every_shape() -> None:
    assert parse_input({"prompt": "p", "response": "r"}, "x") == ScoreInput(prompt="p", response="r")
    assert parse_input({"text": "t"}, "x") == ScoreInput(text="t")
    assert parse_input({"query": "q"}, "x") == ScoreInput(text="q")  # OpenRLHF's name for text
    msgs = parse_input({"messages": [{"role": "user", "content": "hi"}]}, "x")
    assert msgs == ScoreInput(messages=(Message("user", "hi"),))
    assert parse_input({"prompt": "p", "steps": ["a", "b"]}, "x") == ScoreInput(prompt="p", steps=("a", "b"))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p"}, "exactly one"),
        ({"text": "t", "response": "r"}, "exactly one"),
        ({"messages": [{"role": "user"}]}, "malformed"),
        ([1], "JSON object"),
    ],
)
def test_bad_rows_name_their_line(row: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_input(row, "data.jsonl:3")


def test_read_inputs(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert [i.text for i in read_inputs(f)] == ["a", "b"]
    f.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(InputError, match=r"d.jsonl:2: not valid JSON"):
        read_inputs(f)
    f.write_text('{"text": "a"}\n')
    with pytest.raises(InputError, match="at least 2"):
        read_inputs(f)
