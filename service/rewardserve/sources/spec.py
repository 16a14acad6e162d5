"""What the operator declared (--model NAME=PATH, --config FILE): parsed and checked, no torch.

A declaration is a list of ``Entry`` in file order (the first is the default). Each YAML section has a
parser (``SECTIONS``); an entry names the entries it depends on (``refs``) and which kinds those may be
(``ref_kinds``), so ``validate`` checks unknown names, duplicates, member kinds and cycles for every
kind alike. Issue 15 adds sections (functions, judges) by adding parsers, not branches.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rewardserve.config import BatchStrategy, Device, DType, Settings
from rewardserve.errors import ConfigError
from rewardserve.scoring.types import Reduce, StepReduce
from rewardserve.sources.aggregate import Normalization
from rewardserve.sources.entry import NAME_PATTERN, Entry

__all__ = ["NAME_PATTERN", "SECTIONS", "Entry", "from_settings", "parse_config", "validate"]

_NAME = re.compile(NAME_PATTERN)
MODEL_KINDS = frozenset({"model", "prm"})
# Settings a model entry may override (each model has its own engine, batcher and budget).
MODEL_SETTINGS = (
    "device",
    "dtype",
    "max_input_tokens",
    "max_batch_tokens",
    "max_batch_rows",
    "batch_strategy",
    "trust_remote_code",
    "objective",
    "score_activation",
    "truncation_side",
    "fused_cpu",
    "torch_compile",
)


class _EntryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)


class ModelConfig(_EntryConfig):
    """One ``models:`` item. Unset settings fall back to the server's (flags / environment)."""

    path: Path | None = None  # None only for the built-in demo model (no --model, no --config)
    kind: Literal["model", "prm"] | None = None  # None: prm for *ForTokenClassification, else model
    normalize: bool | Path = False
    step_separator: str = "<extra_0>"
    step_reduce: StepReduce = "min"
    device: Device | None = None
    dtype: DType | None = None
    max_input_tokens: int | None = Field(default=None, ge=8, le=1_048_576)
    max_batch_tokens: int | None = Field(default=None, ge=16, le=10_000_000)
    max_batch_rows: int | None = Field(default=None, ge=1, le=65_536)
    batch_strategy: BatchStrategy | None = None
    trust_remote_code: bool | None = None
    objective: str | None = None
    score_activation: Literal["none", "sigmoid"] | None = None
    truncation_side: Literal["left", "right"] | None = None
    fused_cpu: bool | None = None
    torch_compile: bool | None = None

    def settings(self, base: Settings) -> Settings:
        """This model's Settings: the server's, with this entry's overrides (validated again)."""
        overrides = {f: getattr(self, f) for f in MODEL_SETTINGS if getattr(self, f) is not None}
        # models/config cleared: this Settings describes one model, not the declaration it came from.
        values = {**base.model_dump(), **overrides, "model": self.path, "model_name": self.name}
        values.update(models=[], config=None)
        if "max_input_tokens" in overrides and "max_batch_tokens" not in overrides:
            values["max_batch_tokens"] = max(base.max_batch_tokens, overrides["max_input_tokens"])
        return Settings(**values)


class EnsembleConfig(_EntryConfig):
    members: list[str] = Field(min_length=2)
    conservative_k: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    reduce: Reduce = "mean"


class CompositeConfig(_EntryConfig):
    weights: dict[str, float] = Field(min_length=1)


@dataclass(frozen=True)
class ModelPlan:
    """A model entry resolved against the file system: absolute path, kind, normalization."""

    config: ModelConfig
    normalization: Normalization | None


_C = TypeVar("_C", bound=BaseModel)
SectionParser = Callable[[Mapping[str, Any], str, Path], Entry]


def _parse_model(data: Mapping[str, Any], where: str, base_dir: Path) -> Entry:
    cfg = _validated(ModelConfig, data, where)
    path = cfg.path if cfg.path is None or cfg.path.is_absolute() else base_dir / cfg.path
    if path is not None and not path.is_dir():
        raise ConfigError(f"{where} {cfg.name!r}: model directory not found: {path}")
    kind = cfg.kind or detect_kind(path)
    normalization = None
    if cfg.normalize is not False:
        file = cfg.normalize if cfg.normalize is not True else None
        if isinstance(file, Path) and not file.is_absolute():
            file = base_dir / file
        normalization = load_normalization(cfg.name, path, file)
    plan = ModelPlan(cfg.model_copy(update={"path": path, "kind": kind}), normalization)
    return Entry(cfg.name, kind, where, plan)


def _parse_ensemble(data: Mapping[str, Any], where: str, base_dir: Path) -> Entry:
    cfg = _validated(EnsembleConfig, data, where)
    if len(set(cfg.members)) != len(cfg.members):
        raise ConfigError(f"{where} {cfg.name!r}: a member is listed twice in {cfg.members}")
    return Entry(cfg.name, "ensemble", where, cfg, tuple(cfg.members), frozenset({"model"}))


def _parse_composite(data: Mapping[str, Any], where: str, base_dir: Path) -> Entry:
    cfg = _validated(CompositeConfig, data, where)
    for name, w in cfg.weights.items():
        if not math.isfinite(w):
            raise ConfigError(f"{where} {cfg.name!r}: weight of {name!r} is {w}; use a finite number")
    return Entry(cfg.name, "composite", where, cfg, tuple(cfg.weights))


def _parse_function(data: Mapping[str, Any], where: str, base_dir: Path) -> Entry:
    # Imported here: functions/ and generation/ import this module (Entry, NAME_PATTERN).
    from rewardserve.functions.source import parse_function

    return parse_function(data, where, base_dir)


def _parse_judge(data: Mapping[str, Any], where: str, base_dir: Path) -> Entry:
    from rewardserve.generation.judge import parse_judge

    return parse_judge(data, where, base_dir)


SECTIONS: dict[str, SectionParser] = {
    "models": _parse_model,
    "ensembles": _parse_ensemble,
    "composites": _parse_composite,
    "functions": _parse_function,
    "judges": _parse_judge,
}


def _validated(cls: type[_C], data: Any, where: str) -> _C:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
        )
        name = data.get("name")
        raise ConfigError(f"{where}{f' {name!r}' if name else ''}: {problems}") from None


def detect_kind(path: Path | None) -> str:
    """prm for token-classification (process reward) models, else model, from config.json."""
    if path is None:
        return "model"
    try:
        archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return "model"  # the loader reports a missing or broken config.json with its own message
    if any(str(a).endswith(("ForTokenClassification", "ProcessRewardModel")) for a in archs):
        return "prm"
    return "model"


def load_normalization(name: str, model_path: Path | None, file: Path | None) -> Normalization:
    """``normalize: true`` -> the model config's ``mean``/``std`` (OpenRLHF); a path -> that file's."""
    if file is None:
        if model_path is None:
            raise ConfigError(
                f"{name!r}: normalize: true needs a model path (its config.json holds mean/std)"
            )
        source = model_path / "config.json"
        hint = (
            "OpenRLHF writes `mean` and `std` into config.json when it trains with --normalize_reward; "
            "for other models run `rewardserve calibrate` and set normalize: FILE.json"
        )
    else:
        source = file
        hint = "write it with `rewardserve calibrate --model PATH --data FILE.jsonl -o FILE.json`"
    try:
        data = json.loads(source.read_text())
    except OSError as exc:
        raise ConfigError(
            f"{name!r}: cannot read normalization file {source}: {exc.strerror}; {hint}"
        ) from None
    except ValueError:
        raise ConfigError(f"{name!r}: {source} is not valid JSON; {hint}") from None
    mean, std = (data.get("mean"), data.get("std")) if isinstance(data, dict) else (None, None)
    if not isinstance(mean, int | float) or not isinstance(std, int | float) or isinstance(mean, bool):
        raise ConfigError(f"{name!r}: {source} has no numeric `mean` and `std`; {hint}")
    try:
        return Normalization(float(mean), float(std), str(source))
    except ValueError as exc:
        raise ConfigError(f"{name!r}: {exc}") from None


def parse_config(data: Any, base_dir: Path) -> list[Entry]:
    """Entries of a YAML document, in file order (sections as they appear, items in order)."""
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"the config must be a mapping with sections {sorted(SECTIONS)}")
    entries = []
    for section, items in data.items():
        parser = SECTIONS.get(section)
        if parser is None:
            raise ConfigError(f"unknown section {section!r} in the config; known: {sorted(SECTIONS)}")
        if not isinstance(items, list):
            raise ConfigError(f"section {section!r} must be a list of entries")
        entries += [parser(item, f"{section}[{i}]", base_dir) for i, item in enumerate(items)]
    return validate(entries)


def load_config_file(path: Path) -> list[Entry]:
    import yaml  # type: ignore[import-untyped]

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(data, path.parent)


def parse_model_flag(value: str, default_name: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare ``PATH`` keeps the server's model name."""
    name, sep, path = value.partition("=")
    if sep and _NAME.fullmatch(name):
        return name, path
    return default_name, value


def from_settings(settings: Settings) -> list[Entry]:
    """The declaration in Settings: --config FILE, else --model (repeatable), else the demo model;
    then the reward functions of --reward-fn (repeatable), after the models."""
    flags = ([str(settings.model)] if settings.model is not None else []) + list(settings.models)
    functions = [_reward_fn_flag(v, i) for i, v in enumerate(settings.reward_fn)]
    if settings.config is not None:
        if flags:
            raise ConfigError(
                "give either --config or --model, not both: the config file declares the models"
            )
        return validate([*load_config_file(settings.config), *functions])
    if not flags:
        return validate([_parse_model({"name": settings.model_name}, "--model", Path.cwd()), *functions])
    entries = []
    for i, flag in enumerate(flags):
        name, path = parse_model_flag(flag, settings.model_name)
        entries.append(_parse_model({"name": name, "path": path}, f"--model[{i}]", Path.cwd()))
    return validate([*entries, *functions])


def _reward_fn_flag(value: str, index: int) -> Entry:
    from rewardserve.functions.source import parse_reward_fn_flag

    return parse_reward_fn_flag(value, index, Path.cwd())


def validate(entries: Sequence[Entry]) -> list[Entry]:
    """Check names across entries; return them in file order (the builder orders by dependency)."""
    if not entries:
        raise ConfigError("no reward model declared; add a `models:` entry (or pass --model PATH)")
    by_name: dict[str, Entry] = {}
    for e in entries:
        if e.name in by_name:
            raise ConfigError(
                f"name {e.name!r} is declared twice ({by_name[e.name].where} and {e.where}); "
                "names must be unique"
            )
        by_name[e.name] = e
    for e in entries:
        for ref in e.refs:
            target = by_name.get(ref)
            if target is None:
                raise ConfigError(
                    f"{e.where} {e.name!r} names {ref!r}, which is not declared; declared: {sorted(by_name)}"
                )
            if e.ref_kinds is not None and target.kind not in e.ref_kinds:
                raise ConfigError(
                    f"{e.where} {e.name!r}: {ref!r} is a {target.kind} entry; {e.kind} members must be "
                    f"{' or '.join(sorted(e.ref_kinds))} entries"
                )
    dependency_order(entries)  # raises on a cycle
    return list(entries)


def dependency_order(entries: Sequence[Entry]) -> list[Entry]:
    """Entries with every entry before those that name it; a cycle is a ConfigError naming it."""
    by_name = {e.name: e for e in entries}
    done: dict[str, Entry] = {}
    visiting: list[str] = []

    def visit(e: Entry) -> None:
        if e.name in done:
            return
        if e.name in visiting:
            cycle = [*visiting[visiting.index(e.name) :], e.name]
            raise ConfigError(f"cycle between entries: {' -> '.join(cycle)}; an entry cannot contain itself")
        visiting.append(e.name)
        for ref in e.refs:
            visit(by_name[ref])
        visiting.pop()
        done[e.name] = e

    for e in entries:
        visit(e)
    return list(done.values())
