"""Run a cross-check grid with a progress bar and print it: both results, the errors, the worst."""

from __future__ import annotations

import json
import math
import time

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from envs.sim.config import ScenarioConfig
from eval.crosscheck import BOUNDS, METRICS, CaseResult, run_case


def run_grid(cases: list[ScenarioConfig], console: Console) -> list[CaseResult]:
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("cross-checking", total=len(cases))
        for case in cases:
            progress.update(task, description=f"cross-checking {case.name}")
            results.append(run_case(case, time.perf_counter))
            progress.advance(task)
    return results


def worst_errors(results: list[CaseResult]) -> dict[str, tuple[float, str]]:
    """The largest absolute error of each metric over the grid, and the case it came from."""
    worst: dict[str, tuple[float, str]] = {}
    for name in METRICS:
        value, case = max((abs(r.errors[name]), r.name) for r in results)
        worst[name] = (value, case)
    return worst


def _fmt(metric: str, value: float) -> str:
    if metric == "prefix_reuse":
        return f"{value:.3f}"
    if metric == "throughput":
        return f"{value:.2f}"
    return f"{value * 1000:.1f}"


def _ours_dyn(r: CaseResult, metric: str) -> str:
    ours_field, dyn_field, _ = METRICS[metric]
    return f"{_fmt(metric, getattr(r.ours, ours_field))} / {_fmt(metric, getattr(r.dynamo, dyn_field))}"


def _err(metric: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    text = f"{value:+.3f}" if METRICS[metric][2] == "abs" else f"{value * 100:+.1f}%"
    bound = BOUNDS.get(metric)
    return f"[red]{text}[/]" if bound is not None and abs(value) > bound else text


def print_crosscheck(results: list[CaseResult], out: Console, as_json: bool = False) -> int:
    failed = [r.name for r in results if not r.passed]
    worst = worst_errors(results)
    if as_json:
        payload = {
            "cases": [{"name": r.name, "passed": r.passed, "errors": r.errors} for r in results],
            "worst": {m: {"error": v, "case": c} for m, (v, c) in worst.items()},
            "failed": failed,
        }
        out.print_json(json.dumps(payload))
        return 1 if failed else 0
    table = Table(title="ours / dynamo.replay  (times in ms; throughput in requests/s)")
    table.add_column("scenario")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    for r in results:
        table.add_row(r.name, *(_ours_dyn(r, m) for m in METRICS))
        table.add_row("", *(_err(m, r.errors[m]) for m in METRICS), end_section=True)
    out.print(table)
    parts = [
        f"{m} {v:.3f} ({c})" if METRICS[m][2] == "abs" else f"{m} {v * 100:.1f}% ({c})"
        for m, (v, c) in worst.items()
    ]
    out.print("worst errors: " + ", ".join(parts))
    out.print(f"{len(results) - len(failed)} of {len(results)} cases within bounds {BOUNDS}")
    return 1 if failed else 0
