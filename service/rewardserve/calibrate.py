"""Calibrate a reward model for normalization: score a reference set, write its mean and std.

``calibrate(model, data, out)`` scores every row of a JSONL file (the input shapes of /v1/score) with
the model as the server would (same engine, template and truncation rules) and writes
``{"mean", "std"}`` (population std, ddof 0) plus what they were computed from; a ``models:`` entry's
``normalize: FILE.json`` applies it as (r - mean) / std. The CLI command wraps this function.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rewardserve.config import Settings
from rewardserve.errors import InputError
from rewardserve.scoring.types import Message, ScoreInput, StepReduce

_SHAPES = "{prompt, response}, {messages}, {text} (or OpenRLHF's {query}), or {prompt, steps} for a PRM"


def parse_input(row: Any, where: str) -> ScoreInput:
    """One JSONL row -> ScoreInput, accepting exactly the shapes /v1/score accepts."""
    if not isinstance(row, Mapping):
        raise InputError(f"{where}: expected a JSON object, one of {_SHAPES}")
    text = row.get("text", row.get("query"))
    messages = row.get("messages")
    steps = row.get("steps")
    given = [k for k in ("text", "messages") if (text if k == "text" else messages) is not None]
    if steps is None and row.get("response") is not None:
        given.append("prompt/response")
    if steps is not None:
        given.append("steps")
    if len(given) != 1:
        raise InputError(f"{where}: give exactly one of {_SHAPES}; got {given or 'none'}")
    try:
        if messages is not None:
            msgs = tuple(Message(str(m["role"]), str(m["content"])) for m in messages)
            return ScoreInput(messages=msgs)
        if text is not None:
            return ScoreInput(text=str(text))
        if steps is not None:
            return ScoreInput(prompt=str(row.get("prompt") or ""), steps=tuple(str(s) for s in steps))
        return ScoreInput(prompt=str(row.get("prompt") or ""), response=str(row["response"]))
    except (KeyError, TypeError) as exc:
        raise InputError(f"{where}: malformed input ({exc}); expected one of {_SHAPES}") from None


def read_inputs(path: Path) -> list[ScoreInput]:
    inputs = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise InputError(f"{path}:{n}: not valid JSON") from None
            inputs.append(parse_input(row, f"{path}:{n}"))
    if len(inputs) < 2:
        raise InputError(
            f"{path}: {len(inputs)} rows; calibration needs at least 2 (hundreds for a stable std)"
        )
    return inputs


def calibrate(
    model_path: Path,
    data_jsonl: Path,
    out_json: Path | None = None,
    *,
    settings: Settings | None = None,
    kind: str | None = None,
    step_separator: str = "<extra_0>",
    step_reduce: StepReduce = "min",
    truncate: bool = False,
) -> dict[str, Any]:
    """Score ``data_jsonl`` on the model at ``model_path``; write (if ``out_json``) and return
    ``{"mean", "std", "count", ...}``. ``kind`` None: detected (prm for token-classification models)."""
    model_path, data_jsonl = Path(model_path), Path(data_jsonl)
    settings = (settings or Settings()).model_copy(update={"model": model_path})
    # The data is read before torch and transformers are imported (seconds): a bad file fails at once.
    inputs = read_inputs(data_jsonl)
    from rewardserve.scoring.engine import RewardEngine
    from rewardserve.scoring.prm import PRMEngine
    from rewardserve.sources.aggregate import ensemble_stats, reduce_steps
    from rewardserve.sources.spec import detect_kind

    kind = kind or detect_kind(model_path)
    engine: RewardEngine
    if kind == "prm":
        engine = PRMEngine.load(model_path, settings, step_separator=step_separator)
    else:
        engine = RewardEngine.load(model_path, settings)
    encoded = []
    for i, inp in enumerate(inputs):
        try:
            encoded.append(engine.encode(inp, truncate=truncate))
        except InputError as exc:
            raise InputError(f"{data_jsonl} row {i + 1}: {exc}") from None
    budget = max(settings.max_batch_tokens, engine.batch_cost([engine.max_input_tokens]))
    outputs = engine.score_encoded(encoded, budget, settings.max_batch_rows)
    rewards = [
        reduce_steps(o.step_scores, step_reduce) if o.step_scores is not None else o.score for o in outputs
    ]
    stats = ensemble_stats(rewards, 0.0)  # mean and population std of the rewards
    if not math.isfinite(stats.std) or stats.std <= 0:
        raise InputError(f"every reward on {data_jsonl} is {stats.mean}; a std of 0 cannot normalize")
    result: dict[str, Any] = {
        "mean": stats.mean,
        "std": stats.std,
        "count": len(rewards),
        "min": min(rewards),
        "max": max(rewards),
        "tokens": sum(o.tokens for o in outputs),
        "model": str(model_path),
        "kind": kind,
        "data": str(data_jsonl),
        "data_sha256": hashlib.sha256(data_jsonl.read_bytes()).hexdigest(),
        "truncate": truncate,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if kind == "prm":
        result["step_reduce"] = step_reduce
    if out_json is not None:
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
