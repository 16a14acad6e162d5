"""Input files: expand paths and globs, scan them into shards, read one shard's rows.

A row is one JSON object per non-blank line (JSONL) or one Parquet row. Rows are numbered 0.. across
all inputs in the order given (a glob's matches sorted by name), so the output keeps that order. A
shard is a run of up to ``shard_rows`` rows inside one file; for JSONL it records the byte offset of its
first line, so reading a shard never re-reads the file from the start.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rewardserve.errors import BulkError

Format = Literal["jsonl", "parquet"]
_FORMATS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# A JSON escape of a UTF-16 surrogate: json.loads accepts a lone one, but it is not valid UTF-8 text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def file_format(path: Path) -> Format:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BulkError(
            f"{path}: unsupported file type; use .jsonl / .ndjson / .json (JSON lines) or .parquet"
        )
    return fmt


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Paths, globs (``logs/*.parquet``, ``**`` allowed) and directories -> files, in order, no repeats."""
    found: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise BulkError(f"no file matches {pattern!r}")
            found.extend(matches)
        elif Path(pattern).is_dir():
            inside = sorted(
                p for p in Path(pattern).iterdir() if p.is_file() and p.suffix.lower() in _FORMATS
            )
            if not inside:
                raise BulkError(f"directory {pattern} holds no .jsonl or .parquet files")
            found.extend(inside)
        elif Path(pattern).is_file():
            found.append(Path(pattern))
        else:
            raise BulkError(f"input not found: {pattern}")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    for p in unique:
        file_format(p)
    return unique


@dataclass(frozen=True)
class InputFile:
    """One input file as it was when scanned (size and mtime detect a change before a resume)."""

    path: str
    format: Format
    size: int
    mtime_ns: int
    rows: int = 0

    @classmethod
    def stat(cls, path: Path) -> InputFile:
        st = path.stat()
        return cls(str(path), file_format(path), st.st_size, st.st_mtime_ns)

    def identity(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, start + rows)`` of file ``file``; ``first_row`` is the global index of the first."""

    index: int
    file: int
    start: int
    rows: int
    first_row: int
    byte_offset: int = 0  # JSONL: where the first row's line starts
    first_line: int = 1  # JSONL: 1-based line number of that line


def plan_shards(paths: list[Path], shard_rows: int) -> tuple[list[InputFile], list[Shard]]:
    """Count every file's rows and cut them into shards (one pass over each JSONL file)."""
    files: list[InputFile] = []
    shards: list[Shard] = []
    global_row = 0
    for file_index, path in enumerate(paths):
        info = InputFile.stat(path)
        if info.format == "parquet":
            rows = _parquet_rows(path)
            starts = [(s, 0, 1) for s in range(0, rows, shard_rows)]
        else:
            rows, starts = _scan_jsonl(path, shard_rows)
        files.append(InputFile(info.path, info.format, info.size, info.mtime_ns, rows))
        for start, offset, line in starts:
            n = min(shard_rows, rows - start)
            shards.append(Shard(len(shards), file_index, start, n, global_row + start, offset, line))
        global_row += rows
    return files, shards


def _parquet_rows(path: Path) -> int:
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise BulkError(f"{path}: not a readable Parquet file ({exc})") from None


def _scan_jsonl(path: Path, shard_rows: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Row count and (first row, byte offset, line number) of each shard."""
    starts: list[tuple[int, int, int]] = []
    rows = offset = line_no = 0
    with path.open("rb") as f:
        for raw in f:
            line_no += 1
            if raw.strip():
                if rows % shard_rows == 0:
                    starts.append((rows, offset, line_no))
                rows += 1
            offset += len(raw)
    return rows, starts


def peek_columns(path: Path, *, max_rows: int = 100) -> list[str]:
    """Column names of a file: the Parquet schema, or the keys of the first JSON objects."""
    if file_format(path) == "parquet":
        return list(pq.read_schema(path).names)
    names: dict[str, None] = {}
    seen = 0
    with path.open("rb") as f:
        for raw in f:
            if seen >= max_rows:
                break
            if not raw.strip():
                continue
            seen += 1
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):  # a bad row is reported when the shard is read
                continue
            if isinstance(obj, dict):
                names.update(dict.fromkeys(obj))
    return list(names)


@dataclass
class RawRows:
    """One shard as read: each row a dict, or the reason it could not be read.

    ``where[i]`` locates row i in its file (JSONL: 1-based line; Parquet: 0-based row). ``table`` holds
    the Parquet rows as Arrow, so the output keeps their exact column types.
    """

    rows: list[dict[str, Any] | str]
    where: list[int]
    table: pa.Table | None = None
    kind: Literal["line", "file_row"] = "line"


def read_shard(file: InputFile, shard: Shard) -> RawRows:
    if file.format == "parquet":
        return _read_parquet(file, shard)
    return _read_jsonl(file, shard)


def _read_jsonl(file: InputFile, shard: Shard) -> RawRows:
    out = RawRows(rows=[], where=[])
    line_no = shard.first_line - 1
    with open(file.path, "rb") as f:
        f.seek(shard.byte_offset)
        while len(out.rows) < shard.rows:
            raw = f.readline()
            if not raw:
                raise BulkError(
                    f"{file.path} ended early: it changed after it was scanned; rerun with --overwrite"
                )
            line_no += 1
            if not raw.strip():
                continue
            out.rows.append(_parse_line(raw))
            out.where.append(line_no)
    return out


def _parse_line(raw: bytes) -> dict[str, Any] | str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})"
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return f"invalid JSON: {exc}"
    except RecursionError:  # json's C parser recurses per nesting level
        return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    if not isinstance(obj, dict):
        return f"row is a JSON {type(obj).__name__}, not an object"
    if _depth_exceeds(obj, MAX_JSON_DEPTH):
        # Parsed, but deep enough to break what comes next (Arrow conversion, json.dumps).
        return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    if _SURROGATE_ESCAPE.search(raw):
        try:  # paired surrogates decode to one character and are fine; a lone one cannot be encoded
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "invalid UTF-8 (a lone surrogate escape such as \\udc80)"
    return obj


#: Deepest JSON nesting a row may have; real log rows nest a few levels (messages in a list in a row).
MAX_JSON_DEPTH = 64


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests deeper than ``limit`` (iterative: a deep value cannot blow the stack)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def _read_parquet(file: InputFile, shard: Shard) -> RawRows:
    pf = pq.ParquetFile(file.path)
    meta = pf.metadata
    groups: list[int] = []
    group_start = first_group_start = 0
    end = shard.start + shard.rows
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if group_start < end and group_start + n > shard.start:
            if not groups:
                first_group_start = group_start
            groups.append(g)
        group_start += n
    try:
        table = pf.read_row_groups(groups).slice(shard.start - first_group_start, shard.rows)
    except (pa.ArrowException, OSError):
        return _read_parquet_by_group(file, shard, pf, groups, first_group_start)
    if table.num_rows != shard.rows:
        raise BulkError(f"{file.path} has fewer rows than when it was scanned; rerun with --overwrite")
    rows: list[dict[str, Any] | str]
    try:
        rows = list(table.to_pylist())
    except (UnicodeDecodeError, pa.ArrowException):
        rows = [_parquet_row(table, i) for i in range(table.num_rows)]
    return RawRows(rows=rows, where=list(range(shard.start, end)), table=table, kind="file_row")


def _read_parquet_by_group(
    file: InputFile, shard: Shard, pf: pq.ParquetFile, groups: list[int], group_start: int
) -> RawRows:
    """The shard's row groups one at a time, when reading them together failed: the rows of a corrupt
    group become error rows (with the reason), the others are scored. Without one Arrow table for the
    shard, the output's column types come from the rows (as for JSONL)."""
    rows: list[dict[str, Any] | str] = []
    for g in groups:
        n = pf.metadata.row_group(g).num_rows
        try:
            got: list[dict[str, Any] | str] = list(pf.read_row_group(g).to_pylist())
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            got = [f"unreadable Parquet row group {g}: {_short(exc)}"] * n
        rows.extend(got)
    rows = rows[shard.start - group_start : shard.start - group_start + shard.rows]
    if len(rows) != shard.rows:
        raise BulkError(f"{file.path} has fewer rows than when it was scanned; rerun with --overwrite")
    return RawRows(rows=rows, where=list(range(shard.start, shard.start + shard.rows)), kind="file_row")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _parquet_row(table: pa.Table, i: int) -> dict[str, Any] | str:
    """One row on its own, when the batch conversion failed (e.g. invalid UTF-8 in a string column)."""
    try:
        row: dict[str, Any] = table.slice(i, 1).to_pylist()[0]
    except UnicodeDecodeError:
        return "invalid UTF-8 in a string column"
    except pa.ArrowException as exc:
        return f"unreadable row: {exc}"
    return row
