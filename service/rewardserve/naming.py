"""How users name a setting in error messages (pure Python: the compute layer imports it)."""

from __future__ import annotations

# The environment prefix of every Settings field (config.Settings uses it too).
ENV_PREFIX = "REWARDSERVE_"


def setting_name(field: str) -> str:
    """A Settings field as users set it, for error messages: ``--max-queued-tokens
    (REWARDSERVE_MAX_QUEUED_TOKENS)``."""
    return f"--{field.replace('_', '-')} ({ENV_PREFIX}{field.upper()})"
