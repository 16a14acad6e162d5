"""Built-in reward functions (verifiers). They run in the worker processes like any user function,
so a pathological input (a huge expression for sympy) is bounded by the entry's timeout too.

Each returns 1.0 or 0.0 (plus extra fields); a label it cannot use is an error (status "error"), a
response that does not contain an answer is a wrong answer (0.0), because that is the policy's fault.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

# Heavy modules a built-in needs, imported when its worker starts rather than on the first call: the
# first call's timeout must not pay for importing sympy (seconds on a busy machine).
PRELOAD = {"math_verify_reward": "math_verify", "json_valid": "jsonschema"}

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def math_verify_reward(
    *, prompt: Any, response: str, label: Any, metadata: Any = None, **_: Any
) -> dict[str, Any]:
    """``math``: is the response's final answer equal to the label, mathematically?

    math-verify extracts the answer: the last ``\\boxed{...}`` when there is one, else the last LaTeX or
    plain expression/number; ``1/2``, ``0.5``, ``\\frac{2}{4}`` are all equal. The label is parsed the
    same way (a bare ``1/2`` or ``\\frac{1}{2}``; a label math-verify cannot parse is an error).
    Extra field ``answer``: the extracted answer (null when none was found).
    """
    from math_verify import parse, verify  # sympy import: only in workers that run `math`

    if label is None or (isinstance(label, str) and not label.strip()):
        raise ValueError("the math verifier needs a label (the reference answer); none was sent")
    if not isinstance(label, str | int | float) or isinstance(label, bool):
        raise ValueError(
            f"the math verifier's label must be a string or a number, got {type(label).__name__}"
        )
    gold_text = str(label)
    gold = parse(gold_text) or parse(f"\\boxed{{{gold_text}}}")
    if not gold:
        raise ValueError(f"math-verify cannot parse the label {gold_text[:80]!r}")
    predicted = parse(response or "")
    if not predicted:
        return {"score": 0.0, "answer": None}
    correct = verify(gold, predicted)
    return {"score": 1.0 if correct else 0.0, "answer": str(predicted[-1])}


def normalize_text(text: str) -> str:
    """What ``exact`` compares: Unicode NFKC, case folded, runs of whitespace as one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_match(*, prompt: Any, response: str, label: Any, metadata: Any = None, **_: Any) -> float:
    """``exact``: 1.0 when the normalized response equals the normalized label (or any item of a list
    label), else 0.0. Numbers in the label compare as their text (``42``)."""
    options = label if isinstance(label, list) else [label]
    if not options or any(o is None or isinstance(o, dict | list | bool) for o in options):
        raise ValueError("the exact verifier needs a label: a string, a number, or a list of them")
    got = normalize_text(response or "")
    return 1.0 if any(got == normalize_text(str(o)) for o in options) else 0.0


def regex_match(
    *, prompt: Any, response: str, label: Any, metadata: Any = None, match: str = "search", **_: Any
) -> float:
    """``regex``: the label is a Python regular expression; 1.0 when it matches the response.

    ``re.search`` by default: the pattern may match anywhere (anchor it with ``^...$``, or set
    ``kwargs: {match: fullmatch}`` on the entry to require the whole response). No flags are added;
    use inline ones, e.g. ``(?is)``.
    """
    if not isinstance(label, str):
        raise ValueError(f"the regex verifier's label must be a pattern string, got {type(label).__name__}")
    if match not in ("search", "fullmatch"):
        raise ValueError(f"regex match mode {match!r} is not search or fullmatch")
    try:
        pattern = re.compile(label)
    except re.error as exc:
        raise ValueError(f"the label is not a valid regular expression: {exc}") from None
    found = pattern.search(response or "") if match == "search" else pattern.fullmatch(response or "")
    return 1.0 if found else 0.0


def json_valid(*, prompt: Any, response: str, label: Any, metadata: Any = None, **_: Any) -> dict[str, Any]:
    """``json``: 1.0 when the response parses as JSON (a surrounding markdown code fence is allowed)
    and, when the label is a JSON Schema (an object, or its JSON text), validates against it.
    Extra field ``reason`` says why a response scored 0.0. An invalid schema is an error."""
    import jsonschema

    schema: Any = label
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise ValueError("the json verifier's label must be a JSON Schema (object) or null") from None
    if schema is not None and not isinstance(schema, dict | bool):
        raise ValueError(
            f"the json verifier's label must be a JSON Schema object, got {type(schema).__name__}"
        )
    validator = None
    if schema is not None:
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"the label is not a valid JSON Schema: {exc.message}") from None
        validator = cls(schema)
    text = (response or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return {"score": 0.0, "reason": f"not JSON: {exc}"}
    if validator is not None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return {"score": 0.0, "reason": f"schema: {where}: {error.message}"[:300]}
    return {"score": 1.0}
