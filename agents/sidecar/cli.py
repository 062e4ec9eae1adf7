"""`poa-gym sidecar`: run a policy beside a live Dynamo deployment's knob router.

    poa-gym dynamo up llama70b-b200-3p3d-multiturn --speedup 4      # a local mocker deployment
    poa-gym sidecar --policy checkpoints/default                     # its workdir: .dynamo-live
    poa-gym sidecar --policy knee --frontend-url http://fe:8000 --control-url http://kr:9100 \\
        --model-name llama-70b --token-file /etc/poa-gym/token       # a GPU cluster

On plain Dynamo (`poa-gym dynamo up SCENARIO --layout dynamo`, or `--frontend-url` without
`--control-url`) there is no knob router: the sidecar then sets only the busy threshold, through
the frontend's own `POST /busy_threshold`, e.g.
`--policy static:active_prefill_tokens_threshold_frac=0.5`.

A policy that sets `num_prefill_workers` moves workers between the pools of a local deployment
started with `poa-gym dynamo up --split-workers` and a budget (`scaling.max_workers`), every
`--lever-every` intervals, e.g. `--policy static:num_prefill_workers=2`.
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
    p.add_argument(
        "--lever-every",
        type=int,
        default=None,
        help="intervals between P/D moves (num_prefill_workers; default: the environment's)",
    )
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
    from agents.sidecar.pd_lever import PD_LEVER
    from agents.sidecar.policies import SAFE_DEFAULTS, load_policy, parse_knob_values
    from agents.sidecar.service import Sidecar, SidecarConfig

    endpoints = _endpoints(args)
    pools, why_not = _pool_mover(args)
    try:
        safe = SAFE_DEFAULTS | parse_knob_values(args.safe, "--safe")
        lever_ranges = {}
        if pools is not None:  # the safe setting holds the split in force
            safe[PD_LEVER] = float(pools.num_prefill())
            lever_ranges[PD_LEVER] = (1.0, float(pools.budget - 1))
        policy = load_policy(args.policy, safe, lever_ranges)
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
        if endpoints.control_url is None:
            _check_hop_free(policy)
        decider = Decider(policy, DeciderConfig(safe, args.stale_intervals))
    except (ValueError, OSError) as error:  # PolicyLoadError is both a ValueError and a UserError
        raise UserError(str(error)) from None
    if PD_LEVER not in policy.context.knob_names:
        return Sidecar(config, decider, args.policy)
    if pools is None:
        raise UserError(f"--policy {args.policy}: sets {PD_LEVER}, but {why_not}")
    pools.check_range(policy.context.knobs, str(policy.files[0]) if policy.files else args.policy)
    return Sidecar(config, decider, args.policy, pools)


def _pool_mover(args: argparse.Namespace) -> tuple[Any, str]:
    """The P/D lever's mover for `--workdir`'s deployment, or None and why it cannot move workers."""
    from agents.sidecar.pd_lever import PoolMover
    from envs.live.pools import PoolError

    if args.frontend_url is not None:
        return None, "--frontend-url: workers move only on a local deployment (`dynamo up`, --workdir)"
    try:
        from envs.env_config import EnvConfig

        lever_every = EnvConfig().lever_every if args.lever_every is None else args.lever_every
        return PoolMover.for_workdir(Path(args.workdir), lever_every), ""
    except PoolError as error:
        return None, str(error)


def _check_hop_free(policy: Any) -> None:
    from envs.sim.knobs import LEVERS

    router_knobs = [k.name for k in policy.context.knobs if k.name not in LEVERS]
    if router_knobs:
        raise UserError(
            f"--policy {policy.name}: sets router knobs {router_knobs}, which need the knob router; "
            "this deployment has none (plain Dynamo), so only active_prefill_tokens_threshold_frac "
            "can be set (e.g. static:active_prefill_tokens_threshold_frac=0.5)"
        )


def _endpoints(args: argparse.Namespace) -> Any:
    """The deployment's endpoints, checked: the frontend serves the model, the knob router answers
    (on plain Dynamo there is none: `control_url` is None)."""
    from envs.live.backend import LiveBackend, LiveConfig

    explicit = args.frontend_url is not None
    if explicit and args.control_url is None:
        return _plain_endpoints(args)
    if not explicit and (Path(args.workdir) / "deployment.json").is_file():
        from envs.live.deploy import Deployment

        if Deployment.load(Path(args.workdir).resolve()).layout == "dynamo":
            return _plain_endpoints(args)
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


def _plain_endpoints(args: argparse.Namespace) -> Any:
    """A plain Dynamo deployment's endpoints (no knob router), its frontend checked."""
    import dataclasses
    import json
    import urllib.request

    from envs.live.backend import Endpoints, LiveConfig, resolve

    try:
        if args.frontend_url is not None:
            if not args.model_name:
                raise UserError("--frontend-url: also give --model-name")
            token = Path(args.token_file).read_text().strip() if args.token_file else ""
            ends = Endpoints(
                args.frontend_url.rstrip("/"), None, args.model_name, token, args.speedup or 1.0, None
            )
        else:
            ends = dataclasses.replace(
                resolve(LiveConfig(workdir=args.workdir, speedup=args.speedup)), control_url=None
            )
        with urllib.request.urlopen(ends.frontend_url + "/v1/models", timeout=5.0) as response:
            served = [m.get("id") for m in json.loads(response.read()).get("data", [])]
    except (ValueError, OSError) as error:
        raise UserError(f"{args.frontend_url or args.workdir}: {error}") from None
    if ends.model_name not in served:
        raise UserError(f"{ends.frontend_url}: does not serve model {ends.model_name!r} (it serves {served})")
    return ends
