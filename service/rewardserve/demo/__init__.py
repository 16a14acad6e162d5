"""The built-in demo reward model: what ``rewardserve serve`` loads when no ``--model`` is given.

``ensure_demo_model(cache_dir)`` returns a cached, ready-to-load transformers checkpoint, building it
offline from ``pairs.jsonl`` on first use (see ``rewardserve.demo.build``).

The names are re-exported lazily: importing ``rewardserve.demo.build`` eagerly here would make
``python -m rewardserve.demo.build`` warn that the module was already imported before running as
``__main__``, and would load torch for code that only needs the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rewardserve.demo.build import (
        DemoReport,
        build_demo_model,
        demo_model_dir,
        ensure_demo_model,
    )
    from rewardserve.errors import DemoBuildError

__all__ = ["DemoBuildError", "DemoReport", "build_demo_model", "demo_model_dir", "ensure_demo_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rewardserve.demo import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
