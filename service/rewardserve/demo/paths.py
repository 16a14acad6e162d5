"""Which reward model directory to load: the one configured, or the demo model.

Kept apart from ``demo/build.py`` (torch, transformers) so that the server and bulk scoring can ask
for the path without importing the builder until it is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rewardserve.config import Settings

log = logging.getLogger("rewardserve")


def resolve_model_path(settings: Settings) -> Path:
    """The model directory to serve: --model, or the demo model (built offline on first use)."""
    if settings.model is not None:
        return settings.model
    from rewardserve.demo.build import ensure_demo_model

    return ensure_demo_model(settings.cache_dir, log=log.info)
