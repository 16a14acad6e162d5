"""The end of a run: reward statistics, a text summary, and a histogram a person can read at a glance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUANTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class RewardStats:
    count: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[int, float]

    @classmethod
    def of(cls, rewards: np.ndarray) -> RewardStats:
        if rewards.size == 0:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, dict.fromkeys(QUANTILES, nan))
        qs = np.percentile(rewards, QUANTILES)
        return cls(
            count=int(rewards.size),
            mean=float(rewards.mean()),
            std=float(rewards.std()),
            min=float(rewards.min()),
            max=float(rewards.max()),
            quantiles={q: float(v) for q, v in zip(QUANTILES, qs, strict=True)},
        )

    def line(self) -> str:
        qs = "  ".join(f"p{q} {v:.4g}" for q, v in self.quantiles.items())
        return f"mean {self.mean:.4g}  std {self.std:.4g}  min {self.min:.4g}  {qs}  max {self.max:.4g}"


@dataclass(frozen=True)
class Summary:
    """What a run did. Rates count the rows this run scored over ``scoring_s`` (after the model loaded);
    ``wall_s`` is the whole run, start-up and final assembly included."""

    output: str
    errors_file: str | None
    model: str
    engine: str
    rows_in: int
    rows_out: int
    errors: int
    shards: int
    shards_resumed: int
    tokens: int
    wall_s: float
    scoring_s: float
    rows_per_s: float
    tokens_per_s: float
    rewards: RewardStats
    report: str | None = None

    def text(self) -> str:
        lines = [
            f"scored {self.rows_out:,} of {self.rows_in:,} rows with {self.model!r} ({self.engine} engine) "
            f"in {self.wall_s:.1f}s ({self.scoring_s:.1f}s scoring): {self.rows_per_s:,.0f} rows/s, "
            f"{self.tokens_per_s:,.0f} tokens/s",
        ]
        if self.shards_resumed:
            lines.append(
                f"resumed: {self.shards_resumed} of {self.shards} shards were done by an earlier run"
            )
        lines.append(f"reward  {self.rewards.line()}")
        lines.append(f"output  {self.output}")
        if self.errors:
            lines.append(f"errors  {self.errors:,} rows not scored, reasons in {self.errors_file}")
        if self.report:
            lines.append(f"report  {self.report}")
        return "\n".join(lines)


def write_histogram(path: Path, rewards: np.ndarray, summary: Summary) -> None:
    """A PNG: reward histogram, median and mean marked, the middle 50% and 90% shaded, stats beside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = summary.rewards
    fig = Figure(figsize=(10, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)  # Agg: no display needed, no global pyplot state
    ax, side = fig.subplots(1, 2, width_ratios=[5, 1])
    fig.suptitle(
        f"Rewards of {summary.rows_out:,} rows scored by {summary.model}", fontsize=15, fontweight="bold"
    )
    side.set_axis_off()
    if rewards.size == 0:
        ax.text(0.5, 0.5, "no row was scored", ha="center", va="center", fontsize=16, transform=ax.transAxes)
        ax.set_axis_off()
        fig.savefig(path)
        return
    q = s.quantiles
    ax.axvspan(q[5], q[95], color="#9ecae1", alpha=0.25, label="middle 90% (p5–p95)")
    ax.axvspan(q[25], q[75], color="#6baed6", alpha=0.35, label="middle 50% (p25–p75)")
    bins = int(min(80, max(10, math.sqrt(rewards.size))))
    ax.hist(rewards, bins=bins, color="#2171b5", edgecolor="white", linewidth=0.4, zorder=2)
    ax.axvline(q[50], color="#cb181d", linewidth=2, label=f"median {q[50]:.3g}", zorder=3)
    ax.axvline(s.mean, color="#252525", linewidth=1.5, linestyle="--", label=f"mean {s.mean:.3g}", zorder=3)
    ax.set_xlabel("reward", fontsize=12)
    ax.set_ylabel("rows", fontsize=12)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", frameon=False, fontsize=10)
    stats = [
        ("rows", f"{summary.rows_out:,}"),
        ("errors", f"{summary.errors:,}"),
        ("", ""),
        ("mean", f"{s.mean:.4g}"),
        ("std", f"{s.std:.4g}"),
        ("min", f"{s.min:.4g}"),
        *((f"p{k}", f"{v:.4g}") for k, v in q.items()),
        ("max", f"{s.max:.4g}"),
    ]
    width = max(len(v) for _, v in stats)
    side.text(
        0.0,
        1.0,
        "\n".join(f"{k:<7}{v:>{width}}" for k, v in stats),
        transform=side.transAxes,
        ha="left",
        va="top",
        family="monospace",
        fontsize=11,
        linespacing=1.5,
        bbox={"boxstyle": "round,pad=0.6", "facecolor": "#f7f7f7", "edgecolor": "#bdbdbd"},
    )
    fig.savefig(path)
