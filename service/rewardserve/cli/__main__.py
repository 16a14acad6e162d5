"""``python -m rewardserve.cli``: the same as the ``rewardserve`` console script."""

from rewardserve.cli import main

main()
