"""Built-in verifiers, return-value checks and input mapping (in-process: pure logic)."""

from __future__ import annotations

import math

import pytest

from rewardserve.functions.builtins import exact_match, json_valid, math_verify_reward, regex_match
from rewardserve.functions.source import call_kwargs
from rewardserve.functions.worker import check_result
from rewardserve.scoring.types import Message, ScoreInput

MATH_TABLE = [
    # (response, label, expected)
    ("The answer is \\boxed{1/2}", "0.5", 1.0),
    ("\\boxed{\\frac{2}{4}}", "1/2", 1.0),
    ("so we get $\\frac{1}{2}$", "0.5", 1.0),
    ("\\boxed{0.5}", "\\frac{2}{4}", 1.0),
    ("x = 2, so the total is 12", "12", 1.0),  # no box: the last number
    ("\\boxed{12}", 12, 1.0),  # numeric label
    ("\\boxed{\\sqrt{2}/2}", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("First 3, then \\boxed{7}, finally 9", "7", 1.0),  # the boxed answer wins over the last number
    ("The answer is \\boxed{1/3}", "0.5", 0.0),
    ("\\boxed{2}", "1/2", 0.0),
    ("I do not know", "0.5", 0.0),  # unparseable: no answer
    ("", "0.5", 0.0),
]


@pytest.mark.parametrize(("response", "label", "expected"), MATH_TABLE)
def test_math(response: str, label: object, expected: float) -> None:
    out = math_verify_reward(prompt="", response=response, label=label)
    assert out["score"] == expected
    if response in ("I do not know", ""):
        assert out["answer"] is None


def test_math_label_errors() -> None:
    with pytest.raises(ValueError, match="needs a label"):
        math_verify_reward(prompt="", response="\\boxed{1}", label=None)
    with pytest.raises(ValueError, match="string or a number"):
        math_verify_reward(prompt="", response="\\boxed{1}", label={"a": 1})


def test_exact() -> None:
    assert exact_match(prompt="", response="  Paris\n", label="paris") == 1.0
    assert exact_match(prompt="", response="ＰＡＲＩＳ", label="paris") == 1.0  # NFKC full-width
    assert exact_match(prompt="", response="New   York", label="new york") == 1.0
    assert exact_match(prompt="", response="Lyon", label=["Paris", "Lyon"]) == 1.0
    assert exact_match(prompt="", response="42", label=42) == 1.0
    assert exact_match(prompt="", response="Paris.", label="Paris") == 0.0
    with pytest.raises(ValueError, match="needs a label"):
        exact_match(prompt="", response="x", label=None)


def test_regex_searches_unless_fullmatch() -> None:
    assert regex_match(prompt="", response="Answer: 42.", label=r"\b42\b") == 1.0
    assert regex_match(prompt="", response="Answer: 42.", label=r"^42$") == 0.0
    assert regex_match(prompt="", response="Answer: 42.", label=r"Answer: \d+", match="fullmatch") == 0.0
    assert regex_match(prompt="", response="Answer: 42", label=r"Answer: \d+", match="fullmatch") == 1.0
    with pytest.raises(ValueError, match="not a valid regular expression"):
        regex_match(prompt="", response="x", label="(")
    with pytest.raises(ValueError, match="pattern string"):
        regex_match(prompt="", response="x", label=None)


def test_json() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert json_valid(prompt="", response='{"a": 1}', label=None) == {"score": 1.0}
    assert json_valid(prompt="", response='```json\n{"a": 1}\n```', label=schema) == {"score": 1.0}
    assert json_valid(prompt="", response='{"a": 1}', label='{"type": "object"}') == {"score": 1.0}
    wrong = json_valid(prompt="", response='{"a": "x"}', label=schema)
    assert wrong["score"] == 0.0 and wrong["reason"].startswith("schema: a:")
    missing = json_valid(prompt="", response="{}", label=schema)
    assert missing["score"] == 0.0 and "required" in missing["reason"]
    broken = json_valid(prompt="", response="{a: 1", label=None)
    assert broken["score"] == 0.0 and broken["reason"].startswith("not JSON")
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        json_valid(prompt="", response="{}", label={"type": "no-such-type"})


def test_check_result() -> None:
    assert check_result(0.5) == (0.5, None)
    assert check_result(1) == (1.0, None)
    assert check_result({"score": 2.0, "n": 3}) == (2.0, {"n": 3})
    assert check_result({"score": 2.0}) == (2.0, None)
    for bad, message in [
        (None, "returned NoneType"),
        ("1.0", "returned str"),
        (math.inf, "non-finite"),
        ({"value": 1.0}, 'without "score"'),
        ({"score": 1.0, "status": "x"}, "clash"),
        ({"score": 1.0, "obj": object()}, "not JSON-able"),
        ({"score": 1.0, "x": math.nan}, "not JSON-able"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_result(bad)


def test_call_kwargs() -> None:
    pair = call_kwargs(ScoreInput(prompt="p", response="r", label="L", metadata={"m": 1}))
    assert pair == {"prompt": "p", "response": "r", "label": "L", "metadata": {"m": 1}}
    conv = call_kwargs(ScoreInput(messages=(Message("user", "hi"), Message("assistant", "hello")), label=1))
    assert conv["prompt"] == [{"role": "user", "content": "hi"}] and conv["response"] == "hello"
    assert call_kwargs(ScoreInput(text="t"))["response"] == "t"
    with pytest.raises(ValueError, match="end with the assistant"):
        call_kwargs(ScoreInput(messages=(Message("user", "hi"),)))
