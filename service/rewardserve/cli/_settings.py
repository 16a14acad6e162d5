"""Typer options generated from ``Settings``, and building Settings from what was given.

Every Settings field ``x_y`` becomes the option ``--x-y`` with the field's docstring as help, so a
new field is settable from the command line the day it is added and the help cannot drift from the
docs. Options default to None, meaning "not given": Settings then reads ``REWARDSERVE_X_Y`` from the
environment or uses its default. Bounds are checked once, by Settings' own validation.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import ValidationError

from rewardserve.config import Settings
from rewardserve.naming import setting_name

# Flags that existed before the options were generated and that scripts use: kept as aliases.
ALIASES: dict[str, tuple[str, ...]] = {
    "model_name": ("--name",),
    "api_keys": ("--api-keys",),
    "admin_keys": ("--admin-keys",),
}
# Repeatable options are named in the singular: --api-key A --api-key B.
SINGULAR = {"api_keys": "--api-key", "admin_keys": "--admin-key"}
# `--model` is repeatable on the command line: one bare PATH sets Settings.model (today's meaning),
# otherwise the values go to Settings.models, ahead of any `--models` (see split_models).
REPEATED = {"model": list[str]}
MODEL_HELP = (
    "Reward model directory; repeat as --model NAME=PATH to serve several (each with its own batcher "
    "and token budget; the first is the default). A bare PATH is served under --name. Unset (and no "
    "--config): the built-in demo model."
)
GENERATOR_PANEL = "Policy generation (vLLM)"


def flag(field: str) -> str:
    """The option that sets Settings field ``field``."""
    return SINGULAR.get(field) or "--" + field.replace("_", "-")


def _option_type(annotation: Any) -> tuple[Any, str | None]:
    """The Python type typer parses the option as, and a metavar listing the choices of a Literal."""
    args = get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in args if a is not type(None)]
        args = get_args(annotation)
    if get_origin(annotation) is Literal:
        # Parsed as a string; Settings rejects anything else with the list of choices.
        return str, "[" + "|".join(str(a) for a in args) + "]"
    if annotation in (bool, int, float, str, Path):
        return annotation, None
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return list[str], None  # a repeatable option: --x a --x b
    raise TypeError(f"Settings field type {annotation!r} has no command-line form; add one in {__name__}")


def _help(field: str) -> str:
    info = Settings.model_fields[field]
    text = MODEL_HELP if field == "model" else " ".join((info.description or "").split())
    if info.default_factory is None and info.default is not None:
        text += f" [default: {info.default}]"
    env = f"env: {setting_name(field).split('(')[1].rstrip(')')}"
    # Typer renders help as rich markup; square brackets in the docs must not be taken as tags.
    return f"{text} ({env})".replace("[", r"\[")


def settings_parameters(fields: Iterable[str], panel: str | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per Settings field, annotated for typer, defaulting to None."""
    params = []
    for field in fields:
        kind, metavar = (
            (REPEATED[field], "[NAME=]PATH")
            if field in REPEATED
            else _option_type(Settings.model_fields[field].annotation)
        )
        names = (flag(field), *ALIASES.get(field, ()))
        if kind is bool:  # --x / --no-x: either can override an environment that says otherwise
            names = (f"{flag(field)}/--no-{field.replace('_', '-')}",)
        option = typer.Option(
            *names,
            help=_help(field),
            metavar=metavar,
            show_default=False,
            rich_help_panel=GENERATOR_PANEL if field.startswith("generator") else panel,
        )
        params.append(
            inspect.Parameter(
                field, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
            )
        )
    return params


def with_settings_options(
    fields: Iterable[str], panel: str | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a command ``fn(given: dict[str, Any], **own_options)``: the command also takes one
    option per Settings field in ``fields``; those that were given reach ``fn`` in ``given``."""
    generated = settings_parameters(fields, panel)
    names = {p.name for p in generated}

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "given"]
        clash = names & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__name__} declares options that Settings already generates: {clash}")

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            # None, or an empty list for a repeatable option: not given (Settings reads the env).
            given = {k: kwargs.pop(k) for k in names if kwargs.get(k) not in (None, [], ())}
            for k in names:
                kwargs.pop(k, None)
            fn(given, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the signature above, not fn's
        return command

    return decorate


def split_models(given: dict[str, Any]) -> dict[str, Any]:
    """Repeated ``--model`` values -> Settings fields: one bare PATH stays ``model`` (what
    REWARDSERVE_MODEL sets too); otherwise every value goes to ``models`` in the order given (the
    first is the default), a bare PATH among them named by --name."""
    values = given.get("model")
    if not isinstance(values, list):
        return given
    out = dict(given)
    del out["model"]
    if len(values) == 1 and not _is_named(values[0]):
        out["model"] = values[0]
    else:
        out["models"] = [*values, *out.get("models", [])]
    return out


def _is_named(value: str) -> bool:
    from rewardserve.sources.spec import parse_model_flag

    return parse_model_flag(value, "\0")[0] != "\0"


def build_settings(given: dict[str, Any]) -> Settings:
    """Settings from the environment, overridden by the options that were given; invalid values end
    the command with exit code 2 and a message naming each setting as the user sets it."""
    given = split_models(given)
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            where = setting_name(field) if field in Settings.model_fields else "settings"
            lines.append(f"  {where}: {e['msg'].removeprefix('Value error, ')}")
        typer.echo("invalid settings:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
