"""Rows to scoring inputs (with the reason a bad row is refused) and scored rows to Arrow tables."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from rewardserve.errors import BulkError, RowError
from rewardserve.scoring.types import Message, ScoreInput, ScoreOutput

Mode = Literal["pair", "messages", "text"]
# Columns every output gets; an input column of the same name is replaced (rescoring an old output).
OUTPUT_COLUMNS = ("reward", "reward_model", "scored_at")


@dataclass(frozen=True)
class Columns:
    """Which columns hold the input (``mode`` says which kind) and, optionally, a row id."""

    mode: Mode
    prompt: str = "prompt"
    response: str = "response"
    messages: str = "messages"
    text: str = "text"
    id: str | None = None


def resolve_columns(
    *,
    prompt: str | None,
    response: str | None,
    messages: str | None,
    text: str | None,
    id_col: str | None,
    available: Sequence[str],
) -> Columns:
    """The input kind from the options given, else from the columns the first file has."""
    kinds: list[Mode] = []
    if prompt is not None or response is not None:
        kinds.append("pair")
    if messages is not None:
        kinds.append("messages")
    if text is not None:
        kinds.append("text")
    if len(kinds) > 1:
        raise BulkError(
            "give one kind of input: --prompt-col/--response-col, --messages-col or --text-col, not several"
        )
    names = {
        "prompt": prompt or "prompt",
        "response": response or "response",
        "messages": messages or "messages",
        "text": text or "text",
    }
    if kinds:
        return Columns(kinds[0], id=id_col, **names)
    have = set(available)
    if "messages" in have:
        return Columns("messages", id=id_col, **names)
    if {"prompt", "response"} <= have:
        return Columns("pair", id=id_col, **names)
    if "text" in have:
        return Columns("text", id=id_col, **names)
    raise BulkError(
        f"cannot tell which columns to score: the first input has {sorted(have)[:20]}; name them with "
        "--prompt-col/--response-col, --messages-col or --text-col"
    )


def _string(row: Mapping[str, Any], name: str) -> str:
    if name not in row or row[name] is None:
        raise RowError(f"missing field {name!r}")
    value = row[name]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowError(f"invalid UTF-8 in field {name!r} (byte at position {exc.start})") from None
    if not isinstance(value, str):
        raise RowError(f"field {name!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"invalid UTF-8 in field {name!r} (a lone surrogate)") from None
    return value


def _messages(row: Mapping[str, Any], name: str) -> tuple[Message, ...]:
    if name not in row or row[name] is None:
        raise RowError(f"missing field {name!r}")
    value = row[name]
    if isinstance(value, str | bytes):  # logs often keep the conversation as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(f"field {name!r} is text but not a JSON list of messages") from None
    if not isinstance(value, list):
        raise RowError(f"field {name!r} must be a list of {{role, content}}, got {type(value).__name__}")
    if not value:
        raise RowError(f"field {name!r} is empty")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise RowError(f"{name}[{i}] must be an object with role and content, got {type(m).__name__}")
        try:
            role, content = _string(m, "role"), _string(m, "content")
        except RowError as exc:
            raise RowError(f"{name}[{i}]: {exc}") from None
        if not role:
            raise RowError(f"{name}[{i}].role is empty")
        out.append(Message(role, content))
    return tuple(out)


def to_input(row: Mapping[str, Any], cols: Columns) -> ScoreInput:
    """The ScoreInput for one row, or RowError with the reason."""
    if cols.mode == "pair":
        return ScoreInput(prompt=_string(row, cols.prompt), response=_string(row, cols.response))
    if cols.mode == "messages":
        return ScoreInput(messages=_messages(row, cols.messages))
    return ScoreInput(text=_string(row, cols.text))


def json_text(value: Any) -> str | None:
    """A value as text for a column whose JSON types vary: strings as they are, the rest as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=json_default)


def json_default(value: Any) -> Any:
    """JSON for what Arrow hands back that json cannot write (timestamps, bytes, decimals)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """JSON objects -> Arrow, column by column over the union of keys (first seen first).

    A column whose values Arrow cannot put in one type (an id that is sometimes a number, sometimes
    text) is kept as text rather than failing the shard.
    """
    names = list(dict.fromkeys(k for r in rows for k in r))
    arrays = []
    for name in names:
        values = [r.get(name) for r in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowException, UnicodeEncodeError, TypeError, ValueError, OverflowError):
            arrays.append(pa.array([json_text(v) for v in values], type=pa.string()))
    return pa.table(dict(zip(names, arrays, strict=True))) if names else pa.table({})


def with_rewards(
    table: pa.Table,
    outputs: Sequence[ScoreOutput],
    *,
    model_name: str,
    objectives: Sequence[str],
    scored_at: dt.datetime,
) -> pa.Table:
    """``table`` plus reward, reward_<objective>..., reward_status, reward_mask, reward_model,
    scored_at (replacing same-named). A masked row (a reward function's timeout, a judge's unparsed
    answer) has a null reward and its status, never a silent 0."""
    if table.num_rows != len(outputs):
        raise ValueError(f"{table.num_rows} rows but {len(outputs)} rewards")
    n = len(outputs)
    ok = [o.status == "ok" for o in outputs]
    new: dict[str, pa.Array] = {
        "reward": pa.array(
            [o.score if k else None for o, k in zip(outputs, ok, strict=True)], type=pa.float64()
        )
    }
    for i, name in enumerate(objectives):
        values = [o.values[i] if k else None for o, k in zip(outputs, ok, strict=True)]
        new[f"reward_{name}"] = pa.array(values, type=pa.float64())
    new["reward_status"] = pa.array([o.status for o in outputs], type=pa.string())
    new["reward_mask"] = pa.array([not k for k in ok], type=pa.bool_())
    new["reward_model"] = pa.array([model_name] * n, type=pa.string())
    new["scored_at"] = pa.array([scored_at] * n, type=pa.timestamp("us", tz="UTC"))
    for name, arr in new.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, arr)
    return table
