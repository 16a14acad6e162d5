"""The API-key rules and the weights-root guard (api/auth.py), and the raw JSON depth scan."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewardserve.api.auth import Authenticator, Role, allowed_weights_path, key_id
from rewardserve.api.http.middleware import json_depth
from rewardserve.config import Settings
from rewardserve.errors import AuthError, Forbidden

SCORING, ADMIN = "s" * 20, "a" * 20


def test_roles_and_refusals() -> None:
    auth = Authenticator(Settings(api_keys=[SCORING], admin_keys=[ADMIN]))
    assert auth.caller(f"Bearer {SCORING}").role is Role.SCORING
    assert auth.caller(f"bearer  {ADMIN} ").role is Role.ADMIN
    for header in (None, "", "Bearer", SCORING, f"Basic {SCORING}", "Bearer " + "x" * 20):
        with pytest.raises(AuthError) as err:
            auth.caller(header)
        assert SCORING not in str(err.value)
    with pytest.raises(Forbidden):
        auth.check_http("/v1/generator/weights", f"Bearer {SCORING}")
    assert auth.check_http("/v1/generator/weights", f"Bearer {ADMIN}").key_id == key_id(ADMIN)
    assert auth.check_http("/health/ready", None).role is Role.ANONYMOUS
    assert auth.check_http("/metrics", None).role is Role.ANONYMOUS
    assert auth.check_grpc("/grpc.health.v1.Health/Check", None).role is Role.ANONYMOUS
    with pytest.raises(AuthError):
        auth.check_grpc("/rewardserve.v1.RewardService/Score", None)
    with pytest.raises(AuthError):
        Authenticator(Settings(api_keys=[SCORING], metrics_auth=True)).check_http("/metrics", None)
    assert Authenticator(Settings()).check_http("/v1/generator/weights", None).role is Role.ANONYMOUS
    assert len(key_id(SCORING)) == 8 and key_id(SCORING) != key_id(ADMIN)


def test_keys_from_the_environment_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDSERVE_API_KEYS", f"{SCORING}, {ADMIN},")
    assert Settings().api_keys == [SCORING, ADMIN]
    monkeypatch.setenv("REWARDSERVE_API_KEYS", "short")
    with pytest.raises(ValueError, match="16 printable") as err:
        Settings()
    assert "short'" not in str(err.value).split("input_value")[0]


def test_weights_root_guard(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "link").symlink_to(tmp_path / "out")
    (root / "inner").symlink_to(root / "ok")
    assert allowed_weights_path(root, str(root / "ok")) == (root / "ok").resolve()
    assert allowed_weights_path(root, str(root / "inner")) == (root / "ok").resolve()  # a link inside
    messages = set()
    for path in (tmp_path / "out", root / ".." / "out", root / "link", root / "nope", "/", "a\0b"):
        with pytest.raises(Forbidden) as err:
            allowed_weights_path(root, str(path))
        messages.add(str(err.value))
    with pytest.raises(Forbidden) as err:
        allowed_weights_path(None, str(root / "ok"))
    messages.add(str(err.value))
    assert len(messages) == 1


def test_json_depth_skips_strings() -> None:
    assert json_depth(b'{"a": [1, [2, {"b": "[[[[{{{{"}]]}') == 4
    assert json_depth(b'["\\"[[[", [[]]]') == 3
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    assert json_depth(b"") == json_depth(b"3") == 0
