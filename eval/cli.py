"""The `poa-gym` command line: simulate, sweep, eval, train, export, and the tools around them.

User errors (a bad scenario, a missing file, Dynamo not installed) print one clear message and
exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.sidecar import cli as sidecar_cli
from envs.errors import UserError
from envs.scenarios import load_scenario, preset_names, run_scenario
from envs.sim.busy import BusyThresholds
from envs.sim.config import ScenarioConfig
from envs.sim.metrics import Summary, summarize
from eval import (
    bench_sidecar_cli,
    dynamo_cli,
    eval_cli,
    export_cli,
    live_check_cli,
    profile_cli,
    regimes_cli,
    sweep_cli,
    train_cli,
    tune_cli,
)

console = Console(stderr=True)
# Wide tables stay readable when piped to a file or a CI log (rich assumes 80 columns there).
out = Console(width=None if sys.stdout.isatty() else 180)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`poa-gym dynamo status | head`): stop quietly, as `cat` does;
        # stdout goes to /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poa-gym", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("simulate", help="simulate a scenario and print a summary")
    sim.add_argument("scenario", help=f"a preset name ({', '.join(preset_names())}) or a YAML path")
    sim.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    sim.add_argument("--concurrency", type=int, help="closed loop with this many clients")
    sim.add_argument(
        "--duration-s", type=float, help="stop sending new requests after this much simulated time"
    )
    sim.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field, e.g. --set router.overlap_score_credit=0.5",
    )
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sim.set_defaults(handler=_cmd_simulate)

    trace = commands.add_parser("trace", help="write a scenario's synthetic workload as a Mooncake trace")
    trace.add_argument("scenario", help="a preset name or a YAML path (its synthetic workload)")
    trace.add_argument("--out", required=True, help="the .jsonl file to write")
    trace.add_argument("--requests", type=int, default=2000)
    trace.add_argument("--block-tokens", type=int, default=512, help="tokens per hash id (Mooncake: 512)")
    trace.add_argument("--seed", type=int)
    trace.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    trace.set_defaults(handler=_cmd_trace)

    scen = commands.add_parser("scenarios", help="list the preset scenarios")
    scen.set_defaults(handler=_cmd_scenarios)

    cross = commands.add_parser(
        "crosscheck",
        help="compare with Dynamo's offline replay on a grid, or with a live deployment (--live)",
    )
    cross.add_argument(
        "--grid", default="default", help="grid name: default (36 cases), smoke (4) or classes (2)"
    )
    cross.add_argument("--json", action="store_true")
    live_check_cli.add_arguments(cross)
    cross.set_defaults(handler=_cmd_crosscheck)

    bench = commands.add_parser("bench", help="simulated requests per wall-second, ours vs dynamo.replay")
    bench.add_argument("--requests", type=int, default=5000)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--json", action="store_true")
    bench.add_argument(
        "--env",
        action="store_true",
        help="environment steps per wall-second on one core instead (llama70b-b200-1p5d, C=256)",
    )
    bench.add_argument("--steps", type=int, default=40, help="--env: steps per timed rollout")
    bench_sidecar_cli.add_arguments(bench)
    rollouts = bench.add_argument_group("rollouts on Ray (pip install 'poa-gym[ray]')")
    rollouts.add_argument("--rollouts", action="store_true", help="environment steps per second vs workers")
    rollouts.add_argument("--workers", default="1,2", help="--rollouts: worker counts (default: 1,2)")
    rollouts.add_argument("--ray-address", help="--rollouts: a Ray cluster (default: a local instance)")
    bench.set_defaults(handler=_cmd_bench)

    sweep_cli.add_parser(commands)
    eval_cli.add_parser(commands)
    profile_cli.add_parser(commands)
    regimes_cli.add_parser(commands)
    train_cli.add_parser(commands)
    export_cli.add_parser(commands)
    dynamo_cli.add_parser(commands)
    sidecar_cli.add_parser(commands)
    tune_cli.add_parser(commands)
    return parser


# -- simulate ---------------------------------------------------------------------------------


def resolve_scenario(args: argparse.Namespace) -> tuple[ScenarioConfig, Path]:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.concurrency is not None:
        overrides += ["workload.arrival=closed_loop", f"workload.concurrency={args.concurrency}"]
    if args.duration_s is not None:
        overrides.append(f"duration_s={args.duration_s}")
    return load_scenario(args.scenario, overrides)


class _LazyProgress:
    """A progress bar that appears only once a run has taken more than a couple of seconds."""

    def __init__(self, scenario: ScenarioConfig) -> None:
        self._start = time.perf_counter()
        self._total = scenario.workload.num_requests or None
        self._horizon = scenario.duration_s
        self._bar: Progress | None = None
        self._task = 0

    def __call__(self, sim_time_s: float, num_done: int) -> None:
        if self._bar is None:
            if time.perf_counter() - self._start < 2.0:
                return
            self._bar = Progress(
                TextColumn("simulating"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=self._total)
        self._bar.update(
            self._task, completed=num_done, description=f"{num_done} requests, t={sim_time_s:.1f} s"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _cmd_simulate(args: argparse.Namespace) -> int:
    scenario, path = resolve_scenario(args)
    progress = _LazyProgress(scenario)
    start = time.perf_counter()
    try:
        result = run_scenario(scenario, path, progress)
    finally:
        progress.close()
    wall_s = time.perf_counter() - start
    summary = summarize(result.records, result.engine_stats)
    report = simulate_report(summary, result.sim_time_s, wall_s)
    if result.rejections or BusyThresholds.of(scenario.router).enabled:
        report["num_rejected"] = len(result.rejections)
    if args.json:
        out.print_json(json.dumps(report))
    else:
        out.print(_summary_table(scenario, report))
    return 0


def simulate_report(summary: Summary, sim_time_s: float, wall_s: float) -> dict[str, float | int | None]:
    report: dict[str, float | int | None] = {
        "ttft_mean_s": summary.ttft_mean_s,
        "ttft_p50_s": summary.ttft_p50_s,
        "ttft_p99_s": summary.ttft_p99_s,
        "itl_mean_s": summary.itl_mean_s,
        "itl_p50_s": summary.itl_p50_s,
        "itl_p99_s": summary.itl_p99_s,
        "e2e_mean_s": summary.e2e_mean_s,
        "e2e_p99_s": summary.e2e_p99_s,
        "throughput_rps": summary.throughput_rps,
        "output_tok_s": summary.output_tok_s,
        "prefix_reuse_ratio": summary.prefix_reuse_ratio,
        "num_requests": summary.num_requests,
        "num_preemptions": summary.num_preemptions,
        "sim_time_s": sim_time_s,
        "wall_time_s": wall_s,
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


def _summary_table(scenario: ScenarioConfig, report: dict) -> Table:
    table = Table(title=f"{scenario.name} (seed {scenario.seed})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if value is None:
            text = "-"
        elif key.startswith(("ttft_", "itl_", "e2e_")):
            text = f"{value * 1000:.2f} ms"
        elif isinstance(value, float):
            text = f"{value:.3f}"
        else:
            text = str(value)
        table.add_row(key, text)
    return table


def _cmd_trace(args: argparse.Namespace) -> int:
    from envs.sim.run import materialize_sessions
    from envs.traces import mooncake_rows, write_mooncake

    if args.requests <= 0 or args.block_tokens <= 0:
        raise UserError("--requests and --block-tokens must be positive")
    overrides = [*args.overrides, f"workload.num_requests={args.requests}"]
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    scenario, _ = load_scenario(args.scenario, overrides)
    if scenario.workload.arrival in ("trace", "closed_loop"):
        raise UserError(f"{args.scenario}: needs an open-loop synthetic workload (poisson or gamma arrivals)")
    sessions = materialize_sessions(scenario, args.block_tokens)
    rows = mooncake_rows(sessions, args.block_tokens)
    try:
        write_mooncake(rows, args.out)
    except OSError as error:
        raise UserError(f"{args.out}: cannot write ({error.strerror})") from None
    out.print(f"wrote {len(rows)} requests in {len(sessions)} sessions to {args.out}")
    return 0


def _cmd_scenarios(args: argparse.Namespace) -> int:
    table = Table("preset", "description")
    for name in preset_names():
        scenario, _ = load_scenario(name)
        table.add_row(name, scenario.description)
    out.print(table)
    return 0


# -- crosscheck and bench ---------------------------------------------------------------------


def _require_dynamo() -> None:
    from eval.dynamo_replay import dynamo_available

    if not dynamo_available():
        raise UserError("ai-dynamo is not installed in this environment; run `make dynamo` first")


def _cmd_crosscheck(args: argparse.Namespace) -> int:
    from eval.crosscheck import GRIDS
    from eval.crosscheck_report import print_crosscheck, run_grid

    if args.live:
        return live_check_cli.run(args, out, console)
    if args.grid not in GRIDS:
        raise UserError(f"unknown grid '{args.grid}' (choose from {', '.join(GRIDS)})")
    _require_dynamo()
    results = run_grid(GRIDS[args.grid](), console)
    return print_crosscheck(results, out, as_json=args.json)


def _cmd_bench(args: argparse.Namespace) -> int:
    from eval.bench import bench_scenario, run_bench

    if args.requests <= 0 or args.repeats <= 0 or args.steps <= 0:
        raise UserError("--requests, --repeats and --steps must be positive")
    if args.rollouts:
        return _bench_rollouts(args)
    if bench_sidecar_cli.wants_sidecar_bench(args):
        return bench_sidecar_cli.run(args)
    if args.env:
        return _bench_env(args)
    scenario = bench_scenario(args.requests)
    with console.status(f"benchmarking (best of {args.repeats} runs each)"):
        result = run_bench(scenario, repeats=args.repeats)
    report = dataclasses.asdict(result) | {"ratio": result.ratio}
    if args.json:
        out.print_json(json.dumps(report))
        return 0
    out.print(
        f"scenario {result.scenario}: {result.num_requests} requests, {result.sim_time_s:.1f} s simulated"
    )
    out.print(f"ours          {result.ours_rps:10.0f} simulated requests / wall-second")
    if result.dynamo_rps is None:
        out.print("dynamo.replay (not installed: run `make dynamo` to compare)")
    else:
        out.print(f"dynamo.replay {result.dynamo_rps:10.0f} simulated requests / wall-second")
        out.print(f"ratio ours/dynamo = {result.ratio:.2f}")
    return 0


def _bench_rollouts(args: argparse.Namespace) -> int:
    from training.ray_engine import INSTALL_HINT, ray_missing

    if ray_missing():
        raise UserError(f"--rollouts needs Ray: {INSTALL_HINT}")
    try:
        workers = [int(part) for part in args.workers.split(",")]
    except ValueError:
        raise UserError(f"--workers: expected integers separated by commas, got {args.workers!r}") from None
    if not workers or min(workers) < 1:
        raise UserError(f"--workers: every count must be >= 1, got {args.workers!r}")
    from eval.bench_rollouts import bench_rollouts

    with console.status(f"stepping environments on Ray ({args.steps} steps per worker)"):
        results = bench_rollouts(workers, args.steps, args.ray_address)
    if args.json:
        out.print_json(json.dumps([dataclasses.asdict(r) for r in results]))
        return 0
    out.print(f"{os.cpu_count()} CPUs here; {args.steps} environment steps per worker")
    for r in results:
        out.print(
            f"{r.num_workers:3d} workers: {r.steps_per_s:8.1f} steps/s on the wall clock "
            f"(x{r.speedup:.2f} over 1 worker), {r.stepping_steps_per_s:8.1f} counting stepping only"
        )
    return 0


def _bench_env(args: argparse.Namespace) -> int:
    from eval.bench_env import bench_env, format_env_bench

    with console.status(f"stepping the environment (best of {args.repeats} rollouts)"):
        result = bench_env(num_steps=args.steps, repeats=args.repeats)
    if args.json:
        out.print_json(json.dumps(dataclasses.asdict(result)))
    else:
        out.print(format_env_bench(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
