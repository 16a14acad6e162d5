"""FunctionSource: a reward function (built-in verifier or user code) as a registry entry.

Config (``functions:`` in the YAML registry file, or ``--reward-fn NAME[=TARGET]``)::

    functions:
      - name: math                      # a built-in: math, exact, regex, json
      - name: unit_tests
        target: my_rewards.py:run_tests # or module:function; a relative file is relative to the YAML
        timeout_s: 10                   # per input; past it the worker is killed and replaced
        workers: 4                      # processes; default: the cores
        kwargs: {}                      # extra keyword arguments for every call

Each input becomes one call ``fn(prompt=..., response=..., label=..., metadata=..., **kwargs)``:
a prompt/response pair as given; a conversation ending with the assistant's turn as
``prompt`` = the messages before it (list of {"role", "content"}) and ``response`` = its content;
raw ``text`` as ``prompt=""``, ``response=text``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from rewardserve.errors import ConfigError
from rewardserve.functions.pool import CallResult, WorkerPool, default_workers
from rewardserve.functions.worker import BUILTINS, resolve_target
from rewardserve.metrics import Metrics
from rewardserve.scoring.types import RewardResult, ScoreInput, ScoreOptions
from rewardserve.sources.entry import NAME_PATTERN, Entry, parse_section_entry

if TYPE_CHECKING:
    from rewardserve.sources.entry import BuildContext

KIND = "function"


class FunctionConfig(BaseModel):
    """One ``functions:`` item."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    target: str | None = None  # None: the built-in called `name`
    timeout_s: float = Field(default=10.0, gt=0, le=3600)
    workers: int | None = Field(default=None, ge=1, le=1024)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def resolved_target(self) -> str:
        return self.target or self.name


def call_kwargs(inp: ScoreInput) -> dict[str, Any]:
    """The keyword arguments one input is called with (module docstring). Raises ValueError for a
    conversation that does not end with the assistant's turn: there is no response to verify."""
    if inp.messages is not None:
        msgs = [{"role": m.role, "content": m.content} for m in inp.messages]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError("a conversation must end with the assistant's turn (the response to verify)")
        prompt: Any = msgs[:-1]
        response = msgs[-1]["content"]
    elif inp.text is not None:
        prompt, response = "", inp.text
    elif inp.steps is not None:
        prompt, response = inp.prompt or "", "\n".join(inp.steps)
    else:
        prompt, response = inp.prompt or "", inp.response or ""
    return {"prompt": prompt, "response": response, "label": inp.label, "metadata": inp.metadata}


def to_result(call: CallResult) -> RewardResult:
    if call.status == "ok":
        return RewardResult(call.score, extras=call.extras)
    return RewardResult(None, status=call.status, error=call.error)


class FunctionSource:
    """A reward function in its own pool of worker processes. One result per input; a failure
    (exception, bad return value, timeout, dead worker) masks that input only."""

    kind = KIND

    def __init__(self, config: FunctionConfig, *, metrics: Metrics | None = None) -> None:
        self.name = config.name
        self.config = config
        self.metrics = metrics
        self.pool = WorkerPool(
            config.resolved_target,
            workers=config.workers,
            timeout_s=config.timeout_s,
            kwargs=config.kwargs,
            name=config.name,
        )

    def card(self) -> dict[str, Any]:
        target = self.config.resolved_target
        builtin = target in BUILTINS
        return {
            "id": self.name,
            "kind": self.kind,
            # A user function's file path stays on the server; its function name is enough.
            "function": target if builtin else target.rpartition(":")[2],
            "builtin": builtin,
            "timeout_s": self.config.timeout_s,
            "workers": self.pool.size,
        }

    async def start(self) -> None:
        """Start the workers; a target that cannot be loaded is a ConfigError naming the entry."""
        await self.pool.start()

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        await self.pool.close(drain=drain, timeout=timeout)

    async def score(self, inputs: Sequence[ScoreInput], options: ScoreOptions) -> list[RewardResult]:
        async def one(inp: ScoreInput) -> RewardResult:
            try:
                kwargs = call_kwargs(inp)
            except ValueError as exc:
                return RewardResult(None, status="error", error=str(exc))
            return to_result(await self.pool.call(kwargs, deadline=options.deadline))

        results = list(await asyncio.gather(*(one(i) for i in inputs)))
        if self.metrics is not None:
            self.metrics.count_results(self.name, [r.status for r in results])
        return results


# ---------------------------------------------------------------------- registry hooks
def parse_function(data: Mapping[str, Any], where: str, base_dir: Path) -> Entry:
    """The ``functions:`` section parser."""
    cfg = parse_section_entry(FunctionConfig, data, where)
    target = cfg.resolved_target
    if cfg.target is None and target not in BUILTINS:
        raise ConfigError(
            f"{where} {cfg.name!r}: no target and no built-in of that name; give `target: module:function` "
            f"or `target: path/to/file.py:function`, or use a built-in name ({', '.join(sorted(BUILTINS))})"
        )
    spec = resolve_target(target)
    where_part, sep, attr = spec.rpartition(":")
    if not sep or not where_part or not attr:
        raise ConfigError(
            f"{where} {cfg.name!r}: target {target!r} is not `module:function` or `path/to/file.py:function`"
        )
    if where_part.endswith(".py") or "/" in where_part:
        path = Path(where_part)
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ConfigError(f"{where} {cfg.name!r}: reward function file not found: {path}")
        cfg = cfg.model_copy(update={"target": f"{path.resolve()}:{attr}"})
    return Entry(cfg.name, KIND, where, cfg)


def parse_reward_fn_flag(value: str, index: int, base_dir: Path | None = None) -> Entry:
    """``--reward-fn NAME`` (a built-in) or ``--reward-fn NAME=TARGET`` (a user function)."""
    name, sep, target = value.partition("=")
    data: dict[str, Any] = {"name": name}
    if sep:
        data["target"] = target
    return parse_function(data, f"--reward-fn[{index}]", base_dir or Path.cwd())


async def build_function(entry: Entry, ctx: BuildContext) -> FunctionSource:
    """The ``function`` kind's builder. Starts the
    workers, so a target that fails to import stops start-up with its message."""
    source = FunctionSource(entry.plan, metrics=ctx.metrics)
    await source.start()
    return source


__all__ = [
    "FunctionConfig",
    "FunctionSource",
    "build_function",
    "call_kwargs",
    "default_workers",
    "parse_function",
    "parse_reward_fn_flag",
]
