"""`poa-gym sidecar`: run a policy beside a live Dynamo deployment's knob router.

    poa-gym dynamo up llama70b-b200-3p3d-multiturn --speedup 4      # a local mocker deployment
    poa-gym sidecar --policy checkpoints/default                     # its workdir: .dynamo-live
    poa-gym sidecar --policy knee --frontend-url http://fe:8000 --control-url http://kr:9100 \\
        --model-name llama-70b --token-file /etc/poa-gym/token       # a GPU cluster
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from envs.errors import UserError

DEFAULT_WORKDIR = ".dynamo-live"


def add_parser(commands: Any) -> None:
    """Register `sidecar` on the CLI's subcommands (an argparse `_SubParsersAction`)."""
    p = commands.add_parser("sidecar", help="steer a live Dynamo router's knobs with a policy")
    p.add_argument(
        "--policy",
        required=True,
        help="an export folder (or checkpoint folder with export/), knee, default, or static:KNOB=V,...",
    )
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="a `poa-gym dynamo up` workdir")
    p.add_argument("--frontend-url", help="the Dynamo frontend (with --control-url and --model-name)")
    p.add_argument("--control-url", help="the knob router's control server")
    p.add_argument("--model-name", help="the model the frontend serves")
    p.add_argument("--token-file", help="bearer token for the knob router and this sidecar's PUT /mode")
    p.add_argument("--metrics-url", help="the frontend's /metrics, when served elsewhere")
    p.add_argument(
        "--interval-s", type=float, help="deployment seconds per decision (default: the policy's, or 5)"
    )
    p.add_argument("--speedup", type=float, help="a mocker's speed-up (default: the workdir's, or 1)")
    p.add_argument("--stale-intervals", type=int, default=3, help="missed reads before the safe setting")
    p.add_argument("--safe", default="", metavar="KNOB=V,...", help="the safe setting (default: Dynamo's)")
    p.add_argument("--host", default="127.0.0.1", help="where the sidecar's endpoints bind")
    p.add_argument("--port", type=int, default=0, help="the sidecar's port (default: a free one)")
    p.add_argument(
        "--intervals", type=int, help="stop after this many intervals (default: run until stopped)"
    )
    p.set_defaults(handler=_cmd_sidecar)


def _cmd_sidecar(args: argparse.Namespace) -> int:
    from agents.sidecar.service import serve

    sidecar = build_sidecar(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = sidecar.config
    print(f"policy    {sidecar.decider.policy.name}", flush=True)
    print(
        f"deciding  every {config.interval_s:g} s ({config.interval_wall_s:g} s on the wall clock)",
        flush=True,
    )

    def ready(port: int) -> None:
        print(
            f"sidecar   http://{config.host}:{port}  (/metrics, /health; PUT /mode needs the token)",
            flush=True,
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(sidecar, stop, ready, args.intervals)

    asyncio.run(main())
    return 0


def build_sidecar(args: argparse.Namespace) -> Any:
    """The sidecar the flags describe, its deployment checked reachable (UserError otherwise)."""
    from agents.sidecar.decider import Decider, DeciderConfig
    from agents.sidecar.policies import DYNAMO_DEFAULT_KNOBS, load_policy, parse_knob_values
    from agents.sidecar.service import Sidecar, SidecarConfig

    endpoints = _endpoints(args)
    try:
        safe = DYNAMO_DEFAULT_KNOBS | parse_knob_values(args.safe, "--safe")
        policy = load_policy(args.policy, safe)
        interval_s = args.interval_s or getattr(policy.policy, "control_interval_s", None) or 5.0
        token = Path(args.token_file).read_text().strip() if args.token_file else endpoints.token
        config = SidecarConfig(
            endpoints.frontend_url,
            endpoints.control_url,
            endpoints.model_name,
            router_token=endpoints.token,
            token=token,
            interval_s=interval_s,
            speedup=endpoints.speedup,
            metrics_url=args.metrics_url,
            host=args.host,
            port=args.port,
        )
        decider = Decider(policy, DeciderConfig(safe, args.stale_intervals))
    except (ValueError, OSError) as error:  # PolicyLoadError is both a ValueError and a UserError
        raise UserError(str(error)) from None
    return Sidecar(config, decider, args.policy)


def _endpoints(args: argparse.Namespace) -> Any:
    """The deployment's endpoints, checked: the frontend serves the model, the knob router answers."""
    from envs.live.backend import LiveBackend, LiveConfig

    explicit = args.frontend_url is not None
    try:
        config = LiveConfig(
            workdir=None if explicit else args.workdir,
            frontend_url=args.frontend_url,
            control_url=args.control_url,
            model_name=args.model_name,
            token_file=args.token_file,
            speedup=args.speedup,
        )
        return LiveBackend(config).endpoints
    except (ValueError, OSError) as error:  # DeploymentError and Unreachable are UserErrors
        raise UserError(str(error)) from None
