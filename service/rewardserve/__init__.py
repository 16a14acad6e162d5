"""rewardserve: reward-model serving for RLHF."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rewardserve.config import Settings

__version__ = "0.1.0"
__all__ = ["Settings", "__version__"]


def __getattr__(name: str) -> Any:
    # Settings is loaded on first use, not at import: `import rewardserve.client` runs this file, and
    # a trainer's environment has the client's dependencies only (no pydantic-settings, no torch).
    if name == "Settings":
        from rewardserve.config import Settings

        return Settings
    raise AttributeError(f"module 'rewardserve' has no attribute {name!r}")
