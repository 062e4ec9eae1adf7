"""`poa-gym sweep`: a scenario under every policy x concurrency x seed, with PoA-hat per run.

The heavy imports (simulator, PoA-hat, matplotlib) wait until the flags are checked, so a bad
flag fails fast and `poa-gym --help` stays quick.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.policy_spec import KNOBS, PolicySpec, PolicySpecError, parse_policies
from envs.errors import UserError

if TYPE_CHECKING:  # the modules themselves load only once the flags are checked
    from eval.sweep import PolicyPoint, SweepPlan
    from eval.sweep_results import SweepRow

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 180)

DEFAULT_OUT_ROOT = Path("sweep-out")

EPILOG = f"""\
policies (--policies, comma-separated; repeat the flag to add more):
  round_robin, random, power_of_two, least_loaded
                         Dynamo's load-based baseline routers
  cache_aware, llm_d     SGLang's cache-aware router and llm-d's default scorer
  kv                     the KV router with the scenario's own knobs
  default, credit-decay, round-robin, p2c, least-loaded, cache-aware, llm-d
                         poa-gym eval's names for the same fixed policies (credit-decay:
                         overlap_score_credit_decay=1, Dynamo 1.6.1 scenarios only); knee
                         and best-static adapt or search, so they run under poa-gym eval
  static:KNOB=V[,KNOB=V...]
                         the KV router with these knobs fixed, e.g.
                         static:overlap_score_credit=1,prefill_load_scale=1,router_temperature=0
  grid:KNOB=V1/V2/...[,KNOB=V1/V2/...]
                         one static policy per point of the cross product, e.g.
                         grid:router_temperature=0/0.25/0.5/1,overlap_score_weight=0.1/0.5/1/2
                         is 16 policies (the first knob varies slowest)
  A token with '=' and no 'kind:' continues the previous static or grid policy, so
  'static:a=1,b=2,round_robin' is two policies. Knobs (RouterConfig fields):
{textwrap.fill(", ".join(KNOBS), width=92, initial_indent="    ", subsequent_indent="    ")}

runs: every policy x concurrency x seed, closed loop with C clients; seeds are the scenario's
seed (after --set) plus 0..N-1. Override order: --set, --duration-s, the policy, the load.

steady state: requests arriving in [warmup_s, duration_s) are measured; the warm-up defaults to
20% of duration_s. Outputs: results.csv, results.json (schema: eval/METRICS.md, "Sweep
results") and PNG plots in --out (default: sweep-out/<scenario name>).
"""


def add_parser(commands: Any) -> None:
    """Register `sweep` on the CLI's subcommands (an argparse `_SubParsersAction`)."""
    sweep = commands.add_parser(
        "sweep",
        help="PoA-hat and latency for policies x concurrencies x seeds",
        description="Run a scenario closed loop for every policy x concurrency x seed; "
        "write results.csv, results.json and plots.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("scenario", help="a preset name or a YAML path")
    sweep.add_argument(
        "--concurrency",
        action="append",
        required=True,
        metavar="C1,C2,...",
        help="closed-loop client counts, e.g. 8,16,32,64 (repeatable)",
    )
    sweep.add_argument(
        "--policies",
        action="append",
        required=True,
        metavar="SPEC[,SPEC...]",
        help="policies to compare (see below; repeatable)",
    )
    sweep.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per point (default: 3)")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field for every run (applied first)",
    )
    sweep.add_argument("--out", type=Path, help="output folder (default: sweep-out/<scenario name>)")
    sweep.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all CPUs)"
    )
    sweep.add_argument("--warmup-s", type=float, help="simulated seconds dropped (default: 20%% of duration)")
    sweep.add_argument("--duration-s", type=float, help="run length in simulated seconds")
    sweep.add_argument(
        "--poa-stage",
        choices=("agg", "prefill", "decode"),
        help="routing stage PoA-hat prices (default: the widest worker pool)",
    )
    sweep.add_argument("--poa-window", type=int, help="decisions per PoA-hat window (default: pool size)")
    sweep.add_argument("--no-plots", action="store_true", help="write the result files only")
    sweep.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="local processes, or Ray tasks"
    )
    sweep.add_argument(
        "--ray-address", help="--engine ray: a cluster (auto or HOST:PORT); default: a local one"
    )
    sweep.set_defaults(handler=cmd_sweep)


def parse_concurrency(texts: list[str]) -> list[int]:
    """`8,16,32` (possibly several flags) as distinct positive ints, in the order given."""
    values: list[int] = []
    for text in texts:
        for token in text.split(","):
            try:
                value = int(token.strip())
            except ValueError:
                value = 0
            if value <= 0:
                raise UserError(f"--concurrency {text!r}: {token.strip()!r} is not a positive integer")
            if value in values:
                raise UserError(f"--concurrency {text!r}: {value} is given twice")
            values.append(value)
    return values


def _parse_policy_flags(texts: list[str]) -> list[PolicySpec]:
    try:
        return parse_policies(texts)
    except PolicySpecError as error:
        raise UserError(f"--policies: {error}") from None


def _check_engine(args: argparse.Namespace) -> None:
    from training.ray_engine import INSTALL_HINT, ray_missing

    if args.ray_address and args.engine != "ray":
        raise UserError("--ray-address goes with --engine ray")
    if args.engine == "ray" and ray_missing():
        raise UserError(f"--engine ray needs Ray: {INSTALL_HINT}")


def _check_counts(args: argparse.Namespace) -> None:
    for flag, value in (("--seeds", args.seeds), ("--jobs", args.jobs)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.poa_window is not None and args.poa_window < 1:
        raise UserError(f"--poa-window must be >= 1, got {args.poa_window}")


def cmd_sweep(args: argparse.Namespace) -> int:
    concurrencies = parse_concurrency(args.concurrency)
    policies = _parse_policy_flags(args.policies)
    _check_counts(args)
    _check_engine(args)
    from eval.sweep import aggregate, build_plan

    plan = build_plan(
        args.scenario, policies, concurrencies, args.seeds, args.overrides,
        args.duration_s, args.warmup_s, args.poa_stage, args.poa_window,
    )  # fmt: skip
    out_dir = args.out or DEFAULT_OUT_ROOT / plan.scenario_name.replace(os.sep, "_")
    num_procs = min(args.jobs, len(plan.runs))
    console.print(
        f"sweep [bold]{escape(plan.scenario_name)}[/]: {len(policies)} policies x {len(concurrencies)} "
        f"concurrencies x {len(plan.seeds)} seeds = {len(plan.runs)} runs on {num_procs} "
        f"processes; steady state = requests arriving in [{plan.warmup_s:g}, {plan.duration_s:g}) s "
        f"(the first {plan.warmup_s:g} s are warm-up)",
        highlight=False,
    )
    rows = _run_with_progress(plan, args.jobs, args.engine, args.ray_address)
    from eval.sweep_results import write_results

    paths = list(write_results(out_dir, _metadata(args, plan), rows))
    points = aggregate(rows)
    out.print(_aggregate_table(points, plan))
    if not args.no_plots:
        from eval.sweep_plots import write_plots

        paths += write_plots(points, out_dir, _title(plan))
    for path in paths:
        out.print(f"wrote {escape(str(path))}", highlight=False)
    return 0


def _run_with_progress(plan: SweepPlan, jobs: int, engine: str, ray_address: str | None) -> list[SweepRow]:
    from eval.sweep import run_sweep

    with Progress(
        TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"), TimeElapsedColumn(),
        console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=len(plan.runs))
        return run_sweep(plan, jobs, lambda row: bar.advance(task), engine, ray_address)


def canonical_command(args: argparse.Namespace) -> str:
    """The sweep as a command line that reproduces the files (without --out, --jobs and
    --no-plots, which do not change them), so the files do not depend on those either."""
    parts = ["poa-gym", "sweep", args.scenario]
    parts += [f"--concurrency={c}" for c in args.concurrency]
    parts += [f"--policies={p}" for p in args.policies]
    parts += [f"--seeds={args.seeds}"]
    parts += [f"--set={o}" for o in args.overrides]
    for flag in ("warmup_s", "duration_s", "poa_stage", "poa_window"):
        if getattr(args, flag) is not None:
            parts.append(f"--{flag.replace('_', '-')}={getattr(args, flag)}")
    return shlex.join(parts)


def _metadata(args: argparse.Namespace, plan: SweepPlan) -> dict[str, Any]:
    import dataclasses

    try:
        version = metadata.version("poa-gym")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "generator": f"poa-gym {version}",
        "command": canonical_command(args),
        "scenario": plan.scenario_name,
        "scenario_source": plan.scenario_source,
        "grid": {
            "policies": [{"name": p.name, "overrides": list(p.overrides)} for p in plan.policies],
            "concurrency": list(plan.concurrencies),
            "seeds": list(plan.seeds),
            "overrides": list(plan.overrides),
        },
        "window": {"warmup_s": plan.warmup_s, "duration_s": plan.duration_s},
        "poa_params": dataclasses.asdict(plan.poa_params),
    }


def _aggregate_table(points: list[PolicyPoint], plan: SweepPlan) -> Table:
    table = Table(title=f"{plan.scenario_name}: mean over {len(plan.seeds)} seeds, window "
                  f"[{plan.warmup_s:g}, {plan.duration_s:g}) s")  # fmt: skip
    for name in ("policy", "C", "PoA-hat", "min-max", "TTFT p50", "TTFT p99", "ITL p99", "E2E p99",
                 "req/s", "out tok/s", "reuse"):  # fmt: skip
        table.add_column(name, justify="left" if name == "policy" else "right")
    for p in points:
        m = p.mean
        spread = "-" if p.low["poa_hat"] is None else f"{p.low['poa_hat']:.3f}-{p.high['poa_hat']:.3f}"
        table.add_row(
            escape(p.policy), str(p.concurrency), _fmt(m["poa_hat"], "{:.3f}"), spread,
            _ms(m["ttft_p50_s"]), _ms(m["ttft_p99_s"]), _ms(m["itl_p99_s"]), _ms(m["e2e_p99_s"]),
            _fmt(m["throughput_rps"], "{:.2f}"), _fmt(m["output_tok_s"], "{:.0f}"),
            _fmt(m["prefix_reuse_ratio"], "{:.3f}"),
        )  # fmt: skip
    return table


def _title(plan: SweepPlan) -> str:
    seeds = "1 seed" if len(plan.seeds) == 1 else f"mean over {len(plan.seeds)} seeds"
    return f"{plan.scenario_name} ({seeds}, window [{plan.warmup_s:g}, {plan.duration_s:g}) s)"


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _ms(value_s: float | None) -> str:
    return "-" if value_s is None else f"{value_s * 1000:.1f} ms"
