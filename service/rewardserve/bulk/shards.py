"""Where a run keeps its state: part files, a manifest, a lock; and the final assembly.

Exactly once, across kills: a shard's part file (and its errors file) is written to a temp name and
renamed into place, and only then is the shard recorded as done in ``manifest.json`` (itself replaced
atomically). A kill between the two leaves a part that the manifest does not list; the rerun scores
that shard again and replaces it. The final output is assembled from the parts in shard order, so it
does not depend on which shards finished first or in which run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rewardserve.bulk.inputs import InputFile, Shard
from rewardserve.bulk.rows import Columns, json_default, json_text
from rewardserve.errors import BulkError

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Layout:
    """Paths of one run, all derived from OUTPUT (absolute, so Ray workers see the same ones)."""

    output: str

    @property
    def out(self) -> Path:
        return Path(self.output)

    @property
    def parts_dir(self) -> Path:
        return Path(self.output + ".parts")

    @property
    def manifest(self) -> Path:
        return self.parts_dir / "manifest.json"

    @property
    def errors(self) -> Path:
        return Path(self.output + ".errors.jsonl")

    @property
    def out_format(self) -> str:
        return "jsonl" if self.out.suffix.lower() in (".jsonl", ".ndjson", ".json") else "parquet"

    def part(self, index: int) -> Path:
        return self.parts_dir / f"part-{index:05d}.parquet"

    def part_errors(self, index: int) -> Path:
        return self.parts_dir / f"part-{index:05d}.errors.jsonl"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a unique temp file in the same folder, fsync, rename: all or nothing."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Done:
    """A finished shard: rows written, rows refused, tokens scored."""

    rows: int
    errors: int
    tokens: int


@dataclass
class Manifest:
    """What the run is (fingerprint), how it is cut (files, shards) and how far it got (done)."""

    fingerprint: dict[str, Any]
    files: list[InputFile]
    shards: list[Shard]
    columns: Columns
    done: dict[int, Done] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "fingerprint": self.fingerprint,
            "columns": asdict(self.columns),
            "files": [asdict(f) for f in self.files],
            "shards": [asdict(s) for s in self.shards],
            "done": {str(k): asdict(v) for k, v in sorted(self.done.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("version") != MANIFEST_VERSION:
            raise BulkError(
                f"manifest version {data.get('version')!r} is not {MANIFEST_VERSION}; use --overwrite"
            )
        return cls(
            fingerprint=data["fingerprint"],
            files=[InputFile(**f) for f in data["files"]],
            shards=[Shard(**s) for s in data["shards"]],
            columns=Columns(**data["columns"]),
            done={int(k): Done(**v) for k, v in data["done"].items()},
        )

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise BulkError(f"{path} is unreadable ({exc}); use --overwrite to start over") from None

    def save(self, path: Path) -> None:
        text = json.dumps(self.to_json(), separators=(",", ":"))
        atomic_write(path, lambda tmp: tmp.write_text(text))


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first difference between two fingerprints, in words; None when they match."""
    old_inputs, new_inputs = old.get("inputs", []), new.get("inputs", [])
    if [i["path"] for i in old_inputs] != [i["path"] for i in new_inputs]:
        return f"the input files differ (was {len(old_inputs)} files, now {len(new_inputs)})"
    for a, b in zip(old_inputs, new_inputs, strict=True):
        if a != b:
            return f"input {b['path']} changed since the first run (size or modification time)"
    old_opts, new_opts = old.get("options", {}), new.get("options", {})
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            return f"option {key} was {old_opts.get(key)!r}, now {new_opts.get(key)!r}"
    return None


@contextlib.contextmanager
def run_lock(layout: Layout) -> Iterator[None]:
    """One run per OUTPUT at a time (the OS drops the lock when a killed run's process dies)."""
    layout.parts_dir.mkdir(parents=True, exist_ok=True)
    with (layout.parts_dir / "lock").open("w") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BulkError(
                f"another run is writing {layout.output}; wait for it or pick another -o"
            ) from None
        try:
            yield
        finally:
            # A run refused before it planned anything leaves no OUTPUT.parts/ behind.
            if layout.parts_dir.is_dir() and [p.name for p in layout.parts_dir.iterdir()] == ["lock"]:
                cleanup(layout)


def remove_run(layout: Layout) -> None:
    """Forget a run: parts, manifest, output and errors file (for --overwrite)."""
    if layout.parts_dir.exists():
        for p in layout.parts_dir.iterdir():
            if p.name != "lock":
                p.unlink()
    layout.out.unlink(missing_ok=True)
    layout.errors.unlink(missing_ok=True)


def cleanup(layout: Layout) -> None:
    shutil.rmtree(layout.parts_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ assembly
def _unify_type(types: list[pa.DataType]) -> pa.DataType:
    """One type for a column across parts: the common one, a wider number, or text as a last resort."""
    distinct = list(dict.fromkeys(t for t in types if not pa.types.is_null(t)))
    if not distinct:
        return pa.null()
    if len(distinct) == 1:
        return distinct[0]
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct):
        schemas = [pa.schema([("x", t)]) for t in distinct]
        return pa.unify_schemas(schemas, promote_options="permissive").field("x").type
    return pa.string()


def _target_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """Input columns first (first seen first), then the added reward columns, in their order."""
    added = schemas[0].names[schemas[0].get_field_index("reward") :]
    names = list(dict.fromkeys(n for s in schemas for n in s.names if n not in added))
    fields = []
    for name in [*names, *added]:
        types = [s.field(name).type for s in schemas if name in s.names]
        fields.append(pa.field(name, _unify_type(types)))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if col.type == f.type:
            columns.append(col)
        elif pa.types.is_string(f.type) and not pa.types.is_null(col.type):
            columns.append(pa.array([json_text(v) for v in col.to_pylist()], type=pa.string()))
        else:
            columns.append(col.cast(f.type))
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class Assembled:
    rewards: np.ndarray
    model: str | None  # the reward_model the rows carry (None when no row was scored)


def assemble(layout: Layout, manifest: Manifest) -> Assembled:
    """Write OUTPUT (and OUTPUT.errors.jsonl) from the parts, in input order; return every reward."""
    parts = [layout.part(s.index) for s in manifest.shards]
    schema = _target_schema([pq.read_schema(p) for p in parts])
    rewards: list[np.ndarray] = []
    models: list[str] = []

    def tables() -> Iterator[pa.Table]:
        for p in parts:
            table = _conform(pq.read_table(p), schema)
            rewards.append(table.column("reward").to_numpy())
            if table.num_rows and not models:
                models.append(str(table.column("reward_model")[0].as_py()))
            yield table

    def write(tmp: Path) -> None:
        if layout.out_format == "parquet":
            with pq.ParquetWriter(tmp, schema) as writer:
                for table in tables():
                    writer.write_table(table)
            return
        with tmp.open("w", encoding="utf-8") as f:
            for table in tables():
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")

    atomic_write(layout.out, write)
    with_errors = [s.index for s in manifest.shards if manifest.done[s.index].errors]
    if with_errors:

        def write_errors(tmp: Path) -> None:
            with tmp.open("wb") as f:
                for i in with_errors:
                    f.write(layout.part_errors(i).read_bytes())

        atomic_write(layout.errors, write_errors)
    else:
        layout.errors.unlink(missing_ok=True)
    return Assembled(np.concatenate(rewards) if rewards else np.zeros(0), models[0] if models else None)
