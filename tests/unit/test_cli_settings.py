"""`rewardserve serve` takes every Settings field as an option, and what is given reaches Settings."""

from __future__ import annotations

import pytest
import typer.core
import typer.main
from typer.testing import CliRunner

import rewardserve.app
from rewardserve.cli import app
from rewardserve.config import Settings


def _options(command: str) -> dict[str, typer.core.TyperOption]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    cmd = group.commands[command]
    return {p.name: p for p in cmd.params if isinstance(p, typer.core.TyperOption) and p.name is not None}


def test_every_settings_field_is_a_serve_option_with_its_doc() -> None:
    options = _options("serve")
    for field, info in Settings.model_fields.items():
        assert field in options, f"Settings.{field} has no `rewardserve serve` option"
        opt = options[field]
        assert f"--{field.replace('_', '-')}" in opt.opts
        assert info.description, f"Settings.{field} has no docstring"
        assert opt.help is not None and info.description.split()[0] in opt.help
    assert "--name" in options["model_name"].opts  # the flag scripts used before it was generated


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Settings that `serve` would start a server with (the server itself is not the point here)."""
    seen: list[Settings] = []

    async def fake_serve(settings: Settings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(rewardserve.app, "serve", fake_serve)
    for field in Settings.model_fields:
        monkeypatch.delenv(f"REWARDSERVE_{field.upper()}", raising=False)
    return seen


def test_flag_values_reach_settings(captured: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDSERVE_GENERATOR_SEED", "7")  # env var of a generator_* field
    monkeypatch.setenv("REWARDSERVE_WARMUP", "true")
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--max-queued-tokens",
            "1234",
            "--generator-max-samples-per-request",
            "9",
            "--name",
            "rm",
            "--no-warmup",
            "--truncation-side",
            "right",
        ],
    )
    assert result.exit_code == 0, result.output
    (s,) = captured
    assert s.max_queued_tokens == 1234
    assert s.generator_max_samples_per_request == 9
    assert s.generator_seed == 7
    assert s.model_name == "rm"
    assert s.warmup is False  # the flag wins over the environment
    assert s.truncation_side == "right"
    assert s.max_batch_tokens == Settings.model_fields["max_batch_tokens"].default  # not given: default


def test_keys_repeat_on_the_command_line_and_split_in_the_environment(
    captured: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARDSERVE_ADMIN_KEYS", "admin-key-aaaaaaaaaa, admin-key-bbbbbbbbbb")
    args = ["serve", "--api-key", "score-key-1111111111", "--api-key", "score-key-2222222222"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (s,) = captured
    assert s.api_keys == ["score-key-1111111111", "score-key-2222222222"]
    assert s.admin_keys == ["admin-key-aaaaaaaaaa", "admin-key-bbbbbbbbbb"]
    assert s.auth_enabled
    result = CliRunner().invoke(app, ["serve", "--api-key", "short"])
    assert result.exit_code == 2
    assert "short" not in result.output  # a key is never printed, even a bad one
    assert "(REWARDSERVE_API_KEYS)" in result.output


def test_out_of_bounds_names_the_flag_and_env_var(captured: list[Settings]) -> None:
    result = CliRunner().invoke(app, ["serve", "--max-queued-tokens", "1", "--device", "tpu"])
    assert result.exit_code == 2
    assert "--max-queued-tokens (REWARDSERVE_MAX_QUEUED_TOKENS)" in result.output
    assert "--device (REWARDSERVE_DEVICE)" in result.output
    assert not captured
    result = CliRunner().invoke(app, ["serve", "--max-input-tokens", "4096", "--max-batch-tokens", "100"])
    assert result.exit_code == 2
    assert "--max-batch-tokens (REWARDSERVE_MAX_BATCH_TOKENS)" in result.output


def test_score_logs_model_options_come_from_settings() -> None:
    options = _options("score-logs")
    for field in ("model", "device", "dtype", "max_batch_tokens", "torch_threads", "trust_remote_code"):
        assert options[field].help == _options("serve")[field].help
