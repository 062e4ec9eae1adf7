"""`poa-gym eval`: policies side by side on episodes whose load crosses the knee.

The heavy imports (simulator, environment, matplotlib) wait until the flags are checked, so a
bad flag fails fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.policy_spec import PolicySpecError
from agents.registry import NAMED, resolve, split_names
from envs.errors import UserError

if TYPE_CHECKING:
    from agents.episodes import EpisodeSetup
    from agents.evaluate import Evaluation
    from envs.reward import RewardConfig

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 180)

EPILOG = f"""\
policies (comma-separated): {", ".join(NAMED)}, static:KNOB=V[,KNOB=V...], ppo:PATH
  default        Dynamo's KV router with the scenario's knobs
  credit-decay   the same with overlap_score_credit_decay=1 (Dynamo 1.6.1 scenarios only)
  best-static    the best fixed setting of the --search grid, by mean reward on search seeds
  knee           the paper's knee-detection controller (agents/knee.py)
  others         router modes of the simulator (Dynamo's baselines, SGLang's and llm-d's routers)
  ppo:PATH       a trained policy: a checkpoint folder after `poa-gym export PATH`, or its export
                 folder; its knobs and observation features must match the scenario's

episodes: warm-up, then --intervals control intervals of --interval-s simulated seconds, the client
count following --schedule. Eval seeds are 1000000 + 0..N-1 (training and searches use seeds below
1000000). Phases: intervals with C <= knee low (below), in the band (knee), above it (saturated).
Outputs in --out (default eval-out/<scenario>-<schedule>): traces.csv, summary.csv, summary.json,
knobs.png, timeline.png. The printed tables: per-phase means, and each policy's episode reward on
every eval seed (with --versus POLICY, its margin over POLICY on each, and the worst).
"""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="policies side by side on load schedules that cross the knee",
        description="Run episodes of every policy on the same seeds; write traces, summaries and plots.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", help="a preset name or a YAML path")
    parser.add_argument("--policies", default="default,knee", help="comma-separated (default: default,knee)")
    parser.add_argument(
        "--schedule", default="ramp", choices=("constant", "ramp", "step", "burst", "diurnal")
    )
    parser.add_argument("--low", type=int, default=32, help="schedule's low client count (default 32)")
    parser.add_argument("--high", type=int, default=512, help="schedule's high client count (default 512)")
    parser.add_argument("--seeds", type=int, default=2, metavar="N", help="eval seeds (default 2)")
    parser.add_argument("--intervals", type=int, default=60, help="control intervals per episode")
    parser.add_argument("--interval-s", type=float, default=5.0, help="control interval (simulated s)")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="warm-up before the first interval")
    parser.add_argument(
        "--knee-band", default="96,128", metavar="LOW,HIGH", help="the knee: C in (LOW, HIGH]"
    )
    parser.add_argument(
        "--search",
        metavar="KNOB=V1/V2,...",
        help="best-static grid (default: low/mid/high of every knob's range)",
    )
    parser.add_argument("--search-seeds", type=int, default=1, help="seeds per search point (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a reward setting every policy is scored by (envs/reward.py), e.g. itl_weight=2",
    )
    parser.add_argument(
        "--versus",
        metavar="POLICY",
        help="also show each policy's margin over POLICY on every eval seed (one of --policies)",
    )
    parser.add_argument(
        "--levers",
        default="",
        metavar="LEVER[=LOW:HIGH],...",
        help="add levers to the action space over their widest ranges, or LOW:HIGH "
        "(num_prefill_workers: the P/D split of scaling.max_workers)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-plots", action="store_true")
    parser.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    policies = _policies(args.policies)
    if args.versus is not None and args.versus not in policies:
        raise UserError(f"--versus {args.versus!r}: not one of --policies ({', '.join(policies)})")
    if args.seeds < 1 or args.search_seeds < 1 or args.jobs < 1:
        raise UserError("--seeds, --search-seeds and --jobs must be >= 1")
    setup = _setup(args, policies)
    search = _search_values(args.search, setup) if "best-static" in policies else None
    from agents.evaluate import evaluate
    from eval.eval_report import write_plots, write_results

    total = len(policies) * args.seeds + (_grid_size(search) * args.search_seeds if search else 0)
    with _progress() as bar:
        task = bar.add_task("episodes", total=total)
        evaluation = evaluate(
            setup,
            policies,
            args.seeds,
            args.jobs,
            search,
            args.search_seeds,
            progress=lambda _: bar.advance(task),
        )
    out_dir = args.out or Path("eval-out") / f"{setup.scenario}-{args.schedule}"
    paths = write_results(evaluation, out_dir)
    if not args.no_plots:
        paths += write_plots(evaluation, out_dir)
    _print_summary(evaluation)
    _print_seeds(evaluation, args.versus)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _print_seeds(evaluation: Evaluation, versus: str | None) -> None:
    rewards = evaluation.seed_rewards()
    title = "episode reward per eval seed" + (f", and % better than {versus}" if versus else "")
    table = Table(title=title)
    table.add_column("policy")
    for seed in evaluation.seeds:
        table.add_column(str(seed), justify="right")
    table.add_column("mean", justify="right")
    if versus:
        table.add_column("worst margin", justify="right")
    for policy, values in rewards.items():
        mean = f"{sum(values) / len(values):.3f}"
        if not versus or policy == versus:
            table.add_row(policy, *(f"{value:.3f}" for value in values), mean)
            continue
        margins = _margins(values, rewards[versus])
        cells = [f"{value:.3f} ({_pct(m)})" for value, m in zip(values, margins, strict=True)]
        worst = _pct(min(margins)) if all(math.isfinite(m) for m in margins) else "n/a"
        table.add_row(policy, *cells, mean, worst)
    out.print(table)


def _margins(mine: list[float], theirs: list[float]) -> list[float]:
    from agents.evaluate import margin_pct

    return [margin_pct(m, t) for m, t in zip(mine, theirs, strict=True)]


def _pct(value: float) -> str:
    return f"{value:+.1f}%" if math.isfinite(value) else "n/a"


def _policies(text: str) -> list[str]:
    try:
        names = split_names(text)
        for name in names:
            resolve(name)
    except PolicySpecError as error:
        raise UserError(f"--policies: {error}") from None
    return names


def _setup(args: argparse.Namespace, policies: list[str]) -> EpisodeSetup:
    from agents.episodes import EpisodeSetup
    from envs.errors import ScenarioError
    from envs.schedules import ScheduleConfig

    try:
        low, high = (int(part) for part in args.knee_band.split(","))
        schedule = ScheduleConfig(kind=args.schedule, low=args.low, high=args.high)
        setup = EpisodeSetup(
            args.scenario,
            schedule,
            num_intervals=args.intervals,
            interval_s=args.interval_s,
            warmup_s=args.warmup_s,
            overrides=tuple(args.overrides),
            knee_band=(low, high),
            reward=_reward(args.reward),
        )
        if args.levers:
            setup = _with_levers(setup, args.levers)
        for name in policies:  # every policy's scenario loads now, before any episode runs
            _check_policy(setup, name)
    except ScenarioError:
        raise
    except ValueError as error:
        raise UserError(f"eval: {error}") from None
    return setup


def _reward(items: list[str]) -> RewardConfig:
    """`--reward KEY=VALUE` settings as a validated reward config (ValueError names the rule)."""
    import dataclasses

    from envs.reward import RewardConfig

    known = [f.name for f in dataclasses.fields(RewardConfig)]
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--reward {item!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        try:
            values[key] = float(text)
        except ValueError:
            raise ValueError(f"--reward {item!r}: {text!r} is not a number") from None
    return RewardConfig(**values)


def _with_levers(setup: EpisodeSetup, text: str) -> EpisodeSetup:
    """The setup's default knobs plus the named levers, each over its widest range or the one given."""
    import dataclasses

    from envs.levers import lever_ranges
    from envs.scenarios import load_scenario
    from envs.sim.knobs import LEVERS

    scenario, _ = load_scenario(setup.scenario, list(setup.overrides))
    widest = lever_ranges(scenario)
    levers = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, span = item.partition("=")
        if name not in LEVERS:
            raise UserError(f"--levers: unknown lever {name!r} (known: {', '.join(LEVERS)})")
        levers.append((name, *(_lever_span(item, span) if span else widest[name])))
    knobs = [(k.name, k.low, k.high) for k in setup.env().knobs]
    return dataclasses.replace(setup, knobs=(*knobs, *levers))


def _lever_span(item: str, span: str) -> tuple[float, float]:
    try:
        low, high = (float(value) for value in span.split(":"))
    except ValueError:
        raise UserError(f"--levers {item!r}: a range is LOW:HIGH, two numbers") from None
    if not low < high:
        raise UserError(f"--levers {item!r}: LOW must be below HIGH")
    return low, high


def _check_policy(setup: EpisodeSetup, name: str) -> None:
    """The policy builds on the scenario now (its knobs and features fit), not in a worker."""
    from agents.base import PolicyContext
    from envs.errors import ScenarioError
    from envs.sim.knobs import LEVERS

    named = resolve(name)
    try:
        named.build(PolicyContext.from_env(setup.env(named.overrides)))
    except (ScenarioError, PolicySpecError) as error:
        hint = "; --levers NAME=LOW:HIGH sets a lever's range" if any(n in str(error) for n in LEVERS) else ""
        raise UserError(f"policy '{name}' cannot run on {setup.scenario}: {error}{hint}") from None


def _search_values(text: str | None, setup: EpisodeSetup) -> dict[str, tuple[float, ...]]:
    from agents.episodes import default_search_grid

    if text is None:
        return default_search_grid(setup)
    values: dict[str, tuple[float, ...]] = {}
    for token in text.split(","):
        knob, sep, rest = (part.strip() for part in token.partition("="))
        try:
            values[knob] = tuple(float(v) for v in rest.split("/"))
        except ValueError:
            raise UserError(f"--search: '{token}' needs KNOB=V1/V2/... with numbers") from None
        if not sep or not knob:
            raise UserError(f"--search: '{token}' needs KNOB=V1/V2/...")
    knobs = {k.name for k in setup.env().knobs}
    unknown = sorted(set(values) - knobs)
    if unknown:
        raise UserError(f"--search: knob(s) {unknown} are not in the action space {sorted(knobs)}")
    return values


def _grid_size(values: dict[str, tuple[float, ...]]) -> int:
    size = 1
    for options in values.values():
        size *= len(options)
    return size


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _print_summary(evaluation: Evaluation) -> None:
    table = Table(title=f"{evaluation.setup.scenario}: means over {len(evaluation.seeds)} eval seed(s)")
    for column in ("policy", "phase", "PoA-hat", "TTFT P99 ms", "ITL P99 ms", "req/s", "reward"):
        table.add_column(column, justify="left" if column in ("policy", "phase") else "right")
    for row in evaluation.summary():
        table.add_row(
            row.policy,
            row.phase,
            f"{row.poa_hat:.2f}",
            f"{row.ttft_p99_s * 1e3:.1f}",
            f"{row.itl_p99_s * 1e3:.2f}",
            f"{row.throughput_rps:.1f}",
            f"{row.mean_reward:.3f}",
        )
    out.print(table)
    if evaluation.best_static is not None:
        shown = ", ".join(f"{k}={v:g}" for k, v in evaluation.best_static.items())
        out.print(f"best-static: {shown}")
