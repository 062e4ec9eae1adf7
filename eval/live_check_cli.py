"""`poa-gym crosscheck --live ENDPOINT SCENARIO`: the simulator against a running deployment.

ENDPOINT is a `poa-gym dynamo up` workdir, or a frontend URL together with `--control-url` and
`--model-name` (a deployment elsewhere, with the knob router in front of its knob tier).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from envs.errors import UserError


def add_arguments(cross: argparse.ArgumentParser) -> None:
    live = cross.add_argument_group("against a live deployment (--live)")
    live.add_argument("--live", metavar="ENDPOINT", help="a `poa-gym dynamo up` workdir or a frontend URL")
    live.add_argument("scenario", nargs="?", help="the scenario the deployment runs (with --live)")
    live.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    live.add_argument("--loads", default="2,4,8", help="closed-loop client counts, below saturation")
    live.add_argument("--intervals", type=int, default=6, help="measured intervals per load")
    live.add_argument("--interval-s", type=float, default=5.0, help="scenario seconds per interval")
    live.add_argument("--warmup-s", type=float, default=10.0, help="scenario seconds before measuring")
    live.add_argument("--seed", type=int, default=0)
    live.add_argument("--control-url", help="the knob router's control URL (with a frontend URL)")
    live.add_argument("--model-name", help="the served model (with a frontend URL)")
    live.add_argument("--token-file", help="the knob router's bearer token (with a frontend URL)")


def run(args: argparse.Namespace, out: Console, console: Console) -> int:
    from envs.live.backend import Unreachable
    from envs.live.deploy import DeploymentError
    from eval.live_check import LiveCheckSettings, run_live_check

    if not args.scenario:
        raise UserError("crosscheck --live: name the scenario the deployment runs")
    try:
        settings = LiveCheckSettings(
            args.scenario,
            tuple(args.set),
            _loads(args.loads),
            args.interval_s,
            args.intervals,
            args.warmup_s,
            args.seed,
        )
        rows = run_live_check(settings, _live_config(args), lambda line: console.print(line, highlight=False))
    except (Unreachable, DeploymentError, ValueError, RuntimeError) as error:
        raise UserError(f"crosscheck --live: {error}") from None
    return _report(rows, out, args.json)


def _loads(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--loads: needs comma-separated client counts, got {text!r}") from None


def _live_config(args: argparse.Namespace) -> Any:
    from envs.live.backend import LiveConfig

    endpoint = str(args.live)
    if endpoint.startswith(("http://", "https://")):
        if not (args.control_url and args.model_name):
            raise UserError("--live URL: also give --control-url and --model-name")
        return LiveConfig(None, endpoint, args.control_url, args.model_name, args.token_file)
    if not Path(endpoint).is_dir():
        raise UserError(f"--live {endpoint}: no such workdir (start one with `poa-gym dynamo up SCENARIO`)")
    return LiveConfig(workdir=endpoint)


def _report(rows: list[Any], out: Console, as_json: bool) -> int:
    from eval.live_check import BOUNDED, LIVE_METRICS

    failed = [row.concurrency for row in rows if not row.passed]
    if as_json:
        payload = [
            {
                "concurrency": r.concurrency,
                "sim": r.sim,
                "live": r.live,
                "errors": r.errors,
                "passed": r.passed,
            }
            for r in rows
        ]
        out.print_json(json.dumps(payload, default=_json_number))
        return 1 if failed else 0
    table = Table(title="simulated / live  (times in ms, throughput in requests/s; error = live vs sim)")
    table.add_column("clients", justify="right")
    for label in LIVE_METRICS.values():
        table.add_column(label, justify="right")
    for row in rows:
        table.add_row(str(row.concurrency), *(_pair(name, row) for name in LIVE_METRICS))
        table.add_row("", *(_error(name, row.errors[name]) for name in LIVE_METRICS), end_section=True)
    out.print(table)
    bounds = ", ".join(f"{LIVE_METRICS[n]} within {b:.0%}" for n, b in BOUNDED.items())
    out.print(f"{len(rows) - len(failed)} of {len(rows)} loads with {bounds}")
    return 1 if failed else 0


def _pair(name: str, row: Any) -> str:
    return f"{_fmt(name, row.sim[name])} / {_fmt(name, row.live[name])}"


def _fmt(name: str, value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if name.endswith("_s"):
        return f"{value * 1000:.1f}"
    return f"{value:.3f}" if name == "prefix_reuse" else f"{value:.2f}"


def _error(name: str, value: float) -> str:
    from eval.live_check import BOUNDED

    if math.isnan(value):
        return "nan"
    text = f"{value * 100:+.1f}%"
    return f"[red]{text}[/]" if name in BOUNDED and abs(value) > BOUNDED[name] else text


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
