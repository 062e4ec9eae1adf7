"""`poa-gym eval`'s outputs: per-interval traces, per-phase summaries, and plots.

Files (in --out):
    traces.csv     one row per policy x seed x control interval (knobs, regime, PoA-hat, TTFT and
                   ITL P99, throughput, reward)
    summary.csv    one row per policy x phase, means over the eval seeds
    summary.json   the same, with the setup, the seeds, the best-static search and each policy's
                   episode reward per eval seed (`seed_rewards`)
    knobs.png      knob trajectories over time against the load, one panel per knob
    timeline.png   load, PoA-hat, TTFT P99 and throughput over time, one line per policy
Plots show the first eval seed. Nothing in the files depends on the clock or on `--jobs`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.episodes import IntervalRow, row_dict
from agents.evaluate import Evaluation
from agents.registry import ROUTER_MODES

SCHEMA_VERSION = 1


def write_results(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    traces = [row_dict(row) for _, _, result in evaluation.episodes for row in result.rows]
    summary = [row_dict(item) for item in evaluation.summary()]
    paths = [_write_csv(out_dir / "traces.csv", traces), _write_csv(out_dir / "summary.csv", summary)]
    payload = {
        "schema_version": SCHEMA_VERSION,
        "setup": _setup_dict(evaluation),
        "policies": list(evaluation.policies),
        "seeds": list(evaluation.seeds),
        "best_static": dict(evaluation.best_static or {}),
        "search": [
            {"values": dict(p.values), "mean_reward": _finite(p.mean_reward)} for p in evaluation.search
        ],
        "summary": [{k: _finite(v) for k, v in row.items()} for row in summary],
        "seed_rewards": {k: [_finite(v) for v in values] for k, values in evaluation.seed_rewards().items()},
    }
    json_path = out_dir / "summary.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return [*paths, json_path]


def _setup_dict(evaluation: Evaluation) -> dict[str, Any]:
    setup = dataclasses.asdict(evaluation.setup)
    setup["knee_band"] = list(evaluation.setup.knee_band)
    setup["overrides"] = list(evaluation.setup.overrides)
    return setup


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_report(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """The tables and the plots; returns the plots (training logs them to W&B)."""
    write_results(evaluation, out_dir)
    return write_plots(evaluation, out_dir)


def write_plots(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    first = evaluation.seeds[0]
    runs = {name: result.rows for name, seed, result in evaluation.episodes if seed == first}
    return [_knob_plot(runs, evaluation, out_dir), _timeline_plot(runs, evaluation, out_dir)]


def _knob_plot(runs: dict[str, Sequence[IntervalRow]], evaluation: Evaluation, out_dir: Path) -> Path:
    import matplotlib.pyplot as plt

    knob_runs = {name: rows for name, rows in runs.items() if name not in ROUTER_MODES}
    knobs = sorted({knob for rows in knob_runs.values() for knob in rows[0].knobs})
    figure, axes = plt.subplots(len(knobs) + 1, 1, figsize=(9, 2.2 * (len(knobs) + 1)), sharex=True)
    _load_panel(axes[0], next(iter(runs.values())), evaluation)
    for axis, knob in zip(axes[1:], knobs, strict=True):
        for name, rows in knob_runs.items():
            axis.step(*_steps(rows, [r.knobs[knob] for r in rows]), where="post", label=name)
        axis.set_ylabel(knob, fontsize=8)
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("simulated time (s)")
    figure.suptitle(f"{evaluation.setup.scenario}: router knobs over time (seed {evaluation.seeds[0]})")
    figure.tight_layout()
    return _save(figure, out_dir / "knobs.png")


def _timeline_plot(runs: dict[str, Sequence[IntervalRow]], evaluation: Evaluation, out_dir: Path) -> Path:
    import matplotlib.pyplot as plt

    panels = (
        ("poa_hat", "PoA-hat", True),
        ("ttft_p99_s", "TTFT P99 (s)", True),
        ("throughput_rps", "req/s", False),
    )
    figure, axes = plt.subplots(len(panels) + 1, 1, figsize=(9, 9), sharex=True)
    _load_panel(axes[0], next(iter(runs.values())), evaluation)
    for axis, (field, label, log) in zip(axes[1:], panels, strict=True):
        for name, rows in runs.items():
            axis.plot([r.time_s for r in rows], [getattr(r, field) for r in rows], label=name, lw=1.2)
        axis.set_ylabel(label)
        if log:
            axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="upper left", ncol=2)
    axes[-1].set_xlabel("simulated time (s)")
    figure.suptitle(f"{evaluation.setup.scenario}: per-interval metrics (seed {evaluation.seeds[0]})")
    figure.tight_layout()
    return _save(figure, out_dir / "timeline.png")


def _load_panel(axis: Any, rows: Sequence[IntervalRow], evaluation: Evaluation) -> None:
    axis.step(*_steps(rows, [r.concurrency for r in rows]), where="post", color="black")
    low, high = evaluation.setup.knee_band
    axis.axhspan(low, high, color="tab:red", alpha=0.15, label=f"knee band ({low}, {high}]")
    axis.set_yscale("log")
    axis.set_ylabel("clients C")
    axis.legend(fontsize=7, loc="upper left")
    axis.grid(alpha=0.3, which="both")


def _steps(rows: Sequence[IntervalRow], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Each interval's value held from its start to its end (`time_s` is the end)."""
    width_s = rows[1].time_s - rows[0].time_s if len(rows) > 1 else 1.0
    return [rows[0].time_s - width_s] + [r.time_s for r in rows], [values[0], *values]


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
