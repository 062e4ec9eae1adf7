"""`poa-gym dynamo up|status|down`: a local Dynamo 1.6.1 deployment of a scenario on 127.0.0.1.

`up` starts the scenario's mocker workers (its engine, its timing profile as a mocker NPZ, its
KV-transfer link), the knob router that applies per-request knobs, and Dynamo's frontend with the
KV router; it waits until the model is served and prints the endpoints. `down` stops exactly the
processes `up` recorded in the workdir (and the workers `scale` started). `scale --prefill N`
moves workers between the pools of a `--split-workers` deployment with a budget
(`scaling.max_workers`): N prefill workers, the rest decode (`envs.live.pools`). Needs `make dynamo`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from envs.errors import UserError

console = Console(stderr=True)
DEFAULT_WORKDIR = ".dynamo-live"


def add_parser(commands: Any) -> None:
    """Register `dynamo` on the CLI's subcommands (an argparse `_SubParsersAction`)."""
    dynamo = commands.add_parser("dynamo", help="a local Dynamo deployment of a scenario: up, status, down")
    actions = dynamo.add_subparsers(dest="dynamo_command", required=True)

    start = actions.add_parser("up", help="start the scenario's workers, the knob router and the frontend")
    start.add_argument("scenario", help="a preset name or a scenario YAML")
    start.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    start.add_argument("--speedup", type=float, default=1.0, help="divide every modelled duration (mocker)")
    start.add_argument("--port", type=int, default=0, help="the frontend's HTTP port (default: a free one)")
    start.add_argument("--model-name", default="poa-gym-mock", help="the model name clients ask for")
    start.add_argument("--timeout-s", type=float, default=90.0, help="how long to wait for the model")
    start.add_argument("--workdir", default=DEFAULT_WORKDIR, help="logs, PIDs, discovery store, token")
    start.add_argument(
        "--layout",
        choices=("knob-router", "dynamo"),
        default="knob-router",
        help="dynamo: plain Dynamo without the knob router (the baseline; no knobs to set)",
    )
    start.add_argument(
        "--split-workers", action="store_true", help="one process per worker (fault drills, P/D moves)"
    )
    start.set_defaults(handler=_cmd_up)

    scale = actions.add_parser("scale", help="move workers between the prefill and decode pools")
    scale.add_argument("--prefill", type=float, required=True, help="prefill workers; decode gets the rest")
    scale.add_argument("--grace-s", type=float, default=30.0, help="a drained worker's time before SIGKILL")
    scale.add_argument("--workdir", default=DEFAULT_WORKDIR)
    scale.set_defaults(handler=_cmd_scale)

    for name, handler, text in (
        ("status", _cmd_status, "health of the recorded processes, models served, knobs in force"),
        ("down", _cmd_down, "stop exactly the processes `up` recorded"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--workdir", default=DEFAULT_WORKDIR)
        action.set_defaults(handler=handler)


def _cmd_up(args: argparse.Namespace) -> int:
    from envs.live.deploy import up
    from envs.scenarios import load_scenario

    if args.speedup <= 0:
        raise UserError(f"--speedup: must be > 0, got {args.speedup}")
    scenario, _ = load_scenario(args.scenario, args.set)
    try:
        deployment = up(
            scenario,
            Path(args.workdir),
            speedup=args.speedup,
            http_port=args.port,
            model_name=args.model_name,
            timeout_s=args.timeout_s,
            log=lambda line: console.print(line, highlight=False),
            layout=args.layout,
            split_workers=args.split_workers,
        )
    except ValueError as error:  # a DeploymentError is a UserError already
        raise UserError(str(error)) from None
    print(f"frontend  {deployment.frontend_url}  (model {deployment.model_name})")
    if args.layout == "knob-router":
        token_path = Path(args.workdir) / "control.token"
        print(f"knobs     {deployment.control_url}  (PUT /knobs needs the token in {token_path})")
    print(f"workdir   {deployment.workdir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from envs.live.deploy import status

    report = status(Path(args.workdir))
    json.dump(report, sys.stdout, indent=1)
    print()
    running = [p for p in report["processes"].values() if p.get("state") not in ("drained", "failed")]
    healthy = all(p["alive"] for p in running) and report["models"]
    return 0 if healthy else 1


def _cmd_scale(args: argparse.Namespace) -> int:
    from envs.live.pools import move_to

    def log(line: str) -> None:
        console.print(line, highlight=False)

    report = move_to(Path(args.workdir), args.prefill, grace_s=args.grace_s, log=log)
    for step in report.steps:
        killed = " (SIGKILLed after the grace)" if step.killed else ""
        print(f"{step.action:<6} {step.name:<18} {step.duration_s:5.1f} s  {step.instance_id}{killed}")
    print(f"pools     {report.num_prefill} prefill / {report.num_decode} decode ({report.duration_s:.1f} s)")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from envs.live.deploy import down

    stopped = down(Path(args.workdir))
    print("stopped " + (", ".join(stopped) if stopped else "nothing (no recorded process was running)"))
    return 0
