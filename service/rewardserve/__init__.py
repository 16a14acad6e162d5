"""rewardserve: reward-model serving for RLHF."""

from rewardserve.config import Settings

__version__ = "0.1.0"
__all__ = ["Settings", "__version__"]
