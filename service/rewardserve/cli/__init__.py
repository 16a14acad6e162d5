"""Command line: ``rewardserve serve | score-logs | calibrate | demo``, one module per command.

``serve`` takes every Settings field as an option (generated from ``rewardserve.config.Settings``,
see ``_settings``), so ``--x-y`` and ``REWARDSERVE_X_Y`` set the same thing; an option given on the
command line wins over the environment. Command modules import nothing heavy at module level, so
``rewardserve --help`` stays fast.
"""

from __future__ import annotations

import typer

from rewardserve.cli.calibrate import calibrate
from rewardserve.cli.demo import demo
from rewardserve.cli.score_logs import score_logs
from rewardserve.cli.serve import serve

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reward-model serving for RLHF.")
app.command()(serve)
app.command("score-logs")(score_logs)
app.command()(calibrate)
app.command()(demo)


def main() -> None:
    app()
