"""`--model` on the command line: one bare PATH keeps its meaning, NAME=PATH repeats, `--config` is
exclusive with it, and every declaration problem ends `serve` with exit code 2 before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import rewardserve.app
from rewardserve.cli import app
from rewardserve.cli._settings import split_models
from rewardserve.config import Settings


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    seen: list[Settings] = []

    async def fake_serve(settings: Settings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(rewardserve.app, "serve", fake_serve)
    for field in Settings.model_fields:
        monkeypatch.delenv(f"REWARDSERVE_{field.upper()}", raising=False)
    return seen


def test_split_models() -> None:
    assert split_models({"model": ["/m"]}) == {"model": "/m"}
    assert split_models({"model": ["a=/m"]}) == {"models": ["a=/m"]}
    assert split_models({"model": ["a=/m", "/n"], "models": ["c=/o"]}) == {"models": ["a=/m", "/n", "c=/o"]}
    assert split_models({"device": "cpu"}) == {"device": "cpu"}


def test_bare_model_keeps_its_meaning(captured: list[Settings], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--name", "rm"])
    assert result.exit_code == 0, result.output
    (s,) = captured
    assert s.model == tmp_path and s.models == [] and s.model_name == "rm"


def test_env_model_still_works(
    captured: list[Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARDSERVE_MODEL", str(tmp_path))
    assert CliRunner().invoke(app, ["serve"]).exit_code == 0
    assert captured[0].model == tmp_path


def test_repeated_model_flags_in_order(captured: list[Settings], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    result = CliRunner().invoke(app, ["serve", "--model", f"helpful={a}", "--model", f"safety={b}"])
    assert result.exit_code == 0, result.output
    assert captured[0].model is None and captured[0].models == [f"helpful={a}", f"safety={b}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "a=/no/such/dir"], "model directory not found"),
        (["--model", "a=DIR", "--model", "a=DIR"], "declared twice"),
        (["--model", "a=DIR", "--config", "CONFIG"], "either --config or --model"),
        (["--config", "CONFIG_BAD"], "unknown section"),
    ],
)
def test_declaration_errors_exit_2(
    captured: list[Settings], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "m.yaml").write_text(f"models:\n  - {{name: a, path: {tmp_path}}}\n")
    (tmp_path / "bad.yaml").write_text("modelz: []\n")
    subst = {
        "DIR": str(tmp_path),
        "CONFIG": str(tmp_path / "m.yaml"),
        "CONFIG_BAD": str(tmp_path / "bad.yaml"),
    }
    args = [a.replace("DIR", subst["DIR"]) if "=" in a else subst.get(a, a) for a in args]
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not captured
