"""Sweep plots (PNG, matplotlib's Agg backend): a metric against concurrency, one line per policy.

Points are means over seeds; with few policies a shaded band shows the seeds' min-max. With many
policies (a knob grid) lines get thin and the legend moves outside the axes in two columns, so
the plot stays readable; baselines keep thick dashed lines to stand out from the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter

from eval.sweep import PolicyPoint

MANY_POLICIES = 8
BASELINE_COLORS = ("black", "tab:red", "tab:orange", "tab:pink", "tab:brown", "tab:gray")

# (file stem, metric, y label, log y, scale to the shown unit)
PLOTS: tuple[tuple[str, str, str, bool, float], ...] = (
    ("poa_vs_concurrency", "poa_hat", "PoA-hat (actual / optimal)", True, 1.0),
    ("ttft_p99_vs_concurrency", "ttft_p99_s", "TTFT P99 (ms)", False, 1000.0),
    ("throughput_vs_concurrency", "output_tok_s", "throughput (output tokens/s)", False, 1.0),
)


def write_plots(points: Sequence[PolicyPoint], out_dir: Path, title: str) -> list[Path]:
    """One PNG per entry of PLOTS in `out_dir`; returns their paths."""
    paths = []
    for stem, metric, label, log_y, scale in PLOTS:
        path = out_dir / f"{stem}.png"
        _plot_metric(points, metric, label, log_y, scale, title, path)
        paths.append(path)
    return paths


def _plot_metric(
    points: Sequence[PolicyPoint], metric: str, label: str, log_y: bool, scale: float, title: str, path: Path
) -> None:
    policies = list(dict.fromkeys(p.policy for p in points))
    many = len(policies) > MANY_POLICIES
    colors = _colors(policies, many)
    fig, ax = plt.subplots(figsize=(10 if many else 8, 5))
    for policy in policies:
        mine = sorted(
            (p for p in points if p.policy == policy and p.mean[metric] is not None),
            key=lambda p: p.concurrency,
        )
        if not mine:
            continue
        xs = [p.concurrency for p in mine]
        ys = [_scaled(p.mean[metric], scale) for p in mine]
        baseline = not policy.startswith("static:")
        color = colors[policy]
        width = 2.0 if baseline or not many else 0.9
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=3,
            linewidth=width,
            color=color,
            label=_short(policy),
            linestyle="--" if baseline and many else "-",
        )
        if not many and any(p.num_seeds > 1 for p in mine):
            lows = [_scaled(p.low[metric], scale) for p in mine]
            highs = [_scaled(p.high[metric], scale) for p in mine]
            ax.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    concurrencies = sorted({p.concurrency for p in points})
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    if log_y:
        _log_y(ax)
    ax.set_xlabel("concurrency (closed-loop clients)")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=6 if many else 8,
        ncol=2 if len(policies) > 20 else 1,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _colors(policies: list[str], many: bool) -> dict[str, Any]:
    """Few policies: tab10. Many: the static grid on a sequential map (stopping short of its pale
    end), baselines in distinct dark colours so they never blend into the grid."""
    if not many:
        return {policy: plt.get_cmap("tab10")(i % 10) for i, policy in enumerate(policies)}
    statics = [p for p in policies if p.startswith("static:")]
    others = [p for p in policies if not p.startswith("static:")]
    ramp = plt.get_cmap("viridis")
    colors: dict[str, Any] = {p: ramp(0.85 * j / max(1, len(statics) - 1)) for j, p in enumerate(statics)}
    colors |= {p: BASELINE_COLORS[k % len(BASELINE_COLORS)] for k, p in enumerate(others)}
    return colors


def _log_y(ax: Axes) -> None:
    """Log y with plain-number labels; minor ticks get labels too when the data span under a
    decade (PoA-hat near 1 otherwise shows no readable tick)."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    if high / low < 10:
        ax.yaxis.set_minor_formatter(plain)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _scaled(value: float | None, scale: float) -> float:
    return float("nan") if value is None else value * scale


def _short(policy: str) -> str:
    # Legends list many static policies: the kind prefix is the same for all of them.
    return policy.removeprefix("static:")
