"""`poa-gym tune`: a grid of SB3 trainings on Ray Tune, collected into one table.

poa-gym tune --grid seed=0,1,2 --grid learning_rate=1e-4,3e-4 --out tune-out
poa-gym tune --config training/configs/demo.yaml --grid env.scenarios=[a],[b] --ray-address auto
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from envs.errors import UserError

out = Console()
console = Console(stderr=True)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("tune", help="a grid of PPO trainings as Ray Tune trials, one results table")
    parser.add_argument("--config", type=Path, help="the base config (default: training/configs/ppo.yaml)")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="seed, a PPO argument, or env.FIELD"
    )
    parser.add_argument("--out", type=Path, default=Path("tune-out"), help="one checkpoint folder per trial")
    parser.add_argument("--ray-address", help="a Ray cluster (auto or HOST:PORT); default: a local one")
    parser.set_defaults(handler=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from eval.eval_report import write_report
    from training.config import load_train_config
    from training.ray_engine import INSTALL_HINT, ray_missing
    from training.tune import parse_grid, run_tune, trials

    if ray_missing():
        raise UserError(f"poa-gym tune needs Ray Tune: {INSTALL_HINT}")
    grid = parse_grid(args.grid)
    base = load_train_config(args.config)
    names = [t.name for t in trials(base, grid)]
    busy = [n for n in names if (args.out / n).exists()]
    if busy:
        raise UserError(f"{args.out}: holds trial folder(s) {busy} already; pass another --out")
    console.print(f"{len(names)} trial(s) on Ray Tune -> {args.out}: {', '.join(names)}")
    rows = run_tune(base, grid, args.out, args.ray_address, write_report)
    table = Table(title=f"{len(rows)} trials (validation reward; test ratios)")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="left" if column == "trial" else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    out.print(table)
    out.print(f"wrote {args.out / 'tune.csv'} and {args.out / 'tune.json'}")
    return 0


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-" if value is None else str(value)
