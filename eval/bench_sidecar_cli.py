"""`poa-gym bench --sidecar | --request-path | --soak`: the sidecar's benchmarks, printed as tables.

poa-gym bench --sidecar --policy checkpoints/default        # decision latency (no Dynamo)
poa-gym bench --request-path --rates 100,200,300            # added latency per request (Dynamo)
poa-gym bench --soak --duration-s 600 --rates 100           # 10 minutes with the sidecar in the path
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from envs.errors import UserError

out = Console()
console = Console(stderr=True)


def add_arguments(bench: argparse.ArgumentParser) -> None:
    group = bench.add_argument_group("the router sidecar")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--sidecar", action="store_true", help="the sidecar's decision latency")
    mode.add_argument(
        "--request-path", action="store_true", help="per-request latency, knob router vs plain Dynamo"
    )
    mode.add_argument("--soak", action="store_true", help="a steady load with the sidecar deciding")
    group.add_argument(
        "--hop-free",
        action="store_true",
        help="--request-path: plain Dynamo alone vs with the sidecar setting its busy threshold",
    )
    group.add_argument("--policy", default="checkpoints/default", help="--sidecar/--soak: the policy")
    group.add_argument("--scenario", default="agg-4w-prefix", help="--request-path/--soak: the deployment")
    group.add_argument("--rates", default="100,200,300", help="requests per second (--soak: the first)")
    group.add_argument(
        "--duration-s", type=float, default=10.0, help="seconds of load per rate (--soak: in all)"
    )
    group.add_argument("--speedup", type=float, default=20.0, help="the mockers' speed-up")


def wants_sidecar_bench(args: argparse.Namespace) -> bool:
    return bool(args.sidecar or args.request_path or args.soak)


def run(args: argparse.Namespace) -> int:
    rates = _rates(args.rates)
    if args.duration_s <= 0 or args.speedup <= 0:
        raise UserError("--duration-s and --speedup must be > 0")
    if args.sidecar:
        return _decisions(args)
    from envs.live.deploy import dynamo_installed

    if not dynamo_installed():
        raise UserError("--request-path and --soak run a local Dynamo: run `make dynamo` first")
    return _request_path(args, rates) if args.request_path else _soak(args, rates[0])


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--rates: expected numbers separated by commas, got {text!r}") from None
    if not rates or any(rate <= 0 for rate in rates):
        raise UserError(f"--rates: every rate must be > 0, got {text!r}")
    return rates


def _decisions(args: argparse.Namespace) -> int:
    from eval.bench_sidecar import bench_decisions

    with console.status("timing the sidecar's decisions on 400 simulated intervals"):
        result = bench_decisions(args.policy)
    if args.json:
        out.print_json(json.dumps(dataclasses.asdict(result)))
        return 0
    table = Table(title=f"sidecar decisions: {result.policy} ({result.num_decisions} intervals)")
    for column in ("", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    table.add_row("observation + inference", f"{result.decision_p50_ms:.3f}", f"{result.decision_p99_ms:.3f}")
    table.add_row("parse /metrics + decide", f"{result.path_p50_ms:.3f}", f"{result.path_p99_ms:.3f}")
    out.print(table)
    out.print(f"target: decision p99 under 1 ms -> {'met' if result.decision_p99_ms < 1.0 else 'NOT met'}")
    return 0


def _request_path(args: argparse.Namespace, rates: list[float]) -> int:
    from eval.bench_live import HOP_FREE, bench_hop_free, bench_request_path

    bench = bench_hop_free if args.hop_free else bench_request_path
    other = HOP_FREE if args.hop_free else "knob-router"
    results = bench(args.scenario, rates, args.duration_s, args.speedup, progress=_progress)
    by_key = {(r.layout, r.rate_rps): r for r in results}
    rows = []
    for rate in rates:
        base, knob = by_key[("dynamo", rate)], by_key[(other, rate)]
        rows.append(
            {
                "rate_rps": rate,
                "achieved_rps": [base.achieved_rps, knob.achieved_rps],
                "failed": [base.num_failed, knob.num_failed],
                "p50_ms": [base.quantile_ms(50), knob.quantile_ms(50)],
                "p99_ms": [base.quantile_ms(99), knob.quantile_ms(99)],
                "added_p50_ms": knob.quantile_ms(50) - base.quantile_ms(50),
                "added_p99_ms": knob.quantile_ms(99) - base.quantile_ms(99),
            }
        )
    if args.json:
        out.print_json(json.dumps(rows))
        return 0
    with_what = "with the sidecar's busy threshold" if args.hop_free else "with the knob router"
    table = Table(title=f"request path on {args.scenario} (plain Dynamo / {with_what})")
    for column in ("req/s", "achieved", "failed", "p50 ms", "p99 ms", "added p50", "added p99"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['rate_rps']:g}",
            _pair(row["achieved_rps"], ".0f"),
            _pair(row["failed"], "d"),
            _pair(row["p50_ms"], ".1f"),
            _pair(row["p99_ms"], ".1f"),
            f"{row['added_p50_ms']:+.1f}",
            f"{row['added_p99_ms']:+.1f}",
        )
    out.print(table)
    return 0


def _soak(args: argparse.Namespace, rate: float) -> int:
    from eval.bench_live import bench_soak

    samples, metrics = bench_soak(
        args.scenario, args.policy, rate, args.duration_s, args.speedup, progress=_progress
    )
    first, last = samples[0], samples[-1]
    report: dict[str, Any] = {
        "duration_s": last.elapsed_s,
        "rate_rps": rate,
        "sent": last.num_sent,
        "lost": last.num_failed,
        "rss_mb": {
            n: [first.rss_mb[n], max(s.rss_mb[n] for s in samples), last.rss_mb[n]] for n in first.rss_mb
        },
        "sidecar_decisions": [
            line for line in metrics.splitlines() if line.startswith("poa_gym_sidecar_decisions_total")
        ],
    }
    if args.json:
        out.print_json(json.dumps(report))
        return 0
    out.print(
        f"{report['sent']} requests in {report['duration_s']:.0f} s at {rate:g} req/s: {report['lost']} lost"
    )
    for name, (start, peak, end) in report["rss_mb"].items():
        out.print(f"RSS {name:12s} first sample {start:7.1f} MB, peak {peak:7.1f} MB, last {end:7.1f} MB")
    for line in report["sidecar_decisions"]:
        out.print(line)
    return 0


def _pair(values: list[Any], spec: str) -> str:
    return " / ".join(format(v, spec) for v in values)


def _progress(line: str) -> None:
    console.print(line, highlight=False)
