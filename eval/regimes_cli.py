"""`poa-gym regimes RESULTS`: read a sweep's results and report the paper's three regimes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from envs.errors import UserError

out = Console(width=None if sys.stdout.isatty() else 180)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "regimes", help="plateau, knee and explosive growth of PoA-hat in a sweep's results"
    )
    parser.add_argument("results", help="a sweep's results.json (or its folder)")
    parser.add_argument("--artifact-max-c", type=int, default=16, help="grid points up to this are artifacts")
    parser.add_argument("--plateau-max-c", type=int, default=64, help="the plateau ends here at the latest")
    parser.add_argument("--knee-factor", type=float, default=1.25, help="knee: level above this x plateau")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_cmd_regimes)


def _cmd_regimes(args: argparse.Namespace) -> int:
    from eval.regimes import analyse
    from eval.sweep_results import load_results

    path = Path(args.results)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: no such results file (run `poa-gym sweep ... --out DIR` first)")
    try:
        report = analyse(
            load_results(path),
            artifact_max_c=args.artifact_max_c,
            plateau_max_c=args.plateau_max_c,
            knee_factor=args.knee_factor,
        )
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0
    table = Table(title=f"PoA-hat regimes: {path}")
    for column in ("C", "PoA-hat (median)", "spread (std)", "CV", "settings", "regime"):
        table.add_column(column, justify="right")
    for p in report.points:
        table.add_row(
            str(p.concurrency), f"{p.level:.3f}", f"{p.spread:.4f}", f"{p.cv:.2%}", str(p.num_settings),
            _regime(p.concurrency, args.artifact_max_c, report.knee_c),
        )  # fmt: skip
    out.print(table)
    out.print(
        f"plateau {report.plateau_level:.3f} (max CV {report.plateau_max_cv:.2%}); "
        f"knee in ({report.last_pre_knee_c}, {report.knee_c}]; growth {report.growth:.1f}x; "
        f"spread ratio {report.spread_ratio:.1f}x"
    )
    return 0


def _regime(concurrency: int, artifact_max_c: int, knee_c: int | None) -> str:
    if concurrency <= artifact_max_c:
        return "artifact"
    if knee_c is None or concurrency < knee_c:
        return "plateau"
    return "explosive"
