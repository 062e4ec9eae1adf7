"""Busy thresholds, simulator against Dynamo: the same scenario, closed-loop clients and run length
through our simulator and through a plain Dynamo deployment (`poa-gym dynamo up --layout dynamo`),
whose frontend applies the thresholds itself (startup flags, or `POST /busy_threshold`).

Dynamo's replay has no busy thresholds (it takes a `KvRouterConfig`, and they live in the
frontend's worker monitor), so the reference is the real frontend with mocker workers. Both sides
send a turned-away request again after `workload.retry_after_s`. Compared: the share of requests
turned away and the requests completed. The mean TTFTs differ in kind under shedding: the
simulator's counts from a request's first try, Dynamo's own (`nvext.timing`) from the try served.

At a tight threshold one run's share depends on its arrivals (agg-4w-prefix at frac 0.25: 13.5%
to 16.3% over seeds 0-3 in the simulator), so `compare` runs several scenario seeds, each giving
both sides the same Poisson arrivals and prompts, and reports the mean share of each side:

    python -m eval.busy_check agg-4w-prefix --frac 0.25 --seeds 4   # starts and stops Dynamo
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.live.deploy import Deployment, down, up
from envs.live.loadgen import ClosedLoopClients, LiveCompletion, send_turn, session_stream
from envs.sim.config import ScenarioConfig
from envs.sim.metrics import summarize
from envs.sim.run import build_cluster, policy_class_rng, random_streams
from envs.sim.workload import SyntheticSessions, open_loop_starts

SCENARIO = "agg-4w-prefix"
RATE_RPS = 60.0  # Poisson, past what 4 workers serve without queueing (mean TTFT 0.1 s)
DURATION_S = 20.0


@dataclass(frozen=True, slots=True)
class BusyOutcome:
    """One side's run: requests completed and turned away, and the completed ones' mean TTFT."""

    num_completed: int
    num_rejected: int
    duration_s: float
    ttft_mean_s: float

    @property
    def rejected_share(self) -> float:
        sent = self.num_completed + self.num_rejected
        return self.num_rejected / sent if sent else float("nan")

    @property
    def throughput_rps(self) -> float:
        return self.num_completed / self.duration_s


def open_loop(scenario: ScenarioConfig, rate_rps: float, duration_s: float) -> ScenarioConfig:
    """The scenario as Poisson arrivals at `rate_rps` for `duration_s`, one turn a session."""
    workload = dataclasses.replace(
        scenario.workload, arrival="poisson", rate_rps=rate_rps, concurrency=None, num_requests=None,
        turns_per_session=1,
    )  # fmt: skip
    return dataclasses.replace(scenario, workload=workload, duration_s=duration_s)


def simulated(scenario: ScenarioConfig) -> BusyOutcome:
    cluster = build_cluster(scenario)
    cluster.env.run()
    duration_s = float(scenario.duration_s or cluster.env.now)
    finished = [r for r in cluster.records if r.arrival_s < duration_s]
    ttft = summarize(finished).ttft_mean_s
    return BusyOutcome(len(finished), len(cluster.rejections), duration_s, ttft)


def live(scenario: ScenarioConfig, deployment: Deployment) -> BusyOutcome:
    """Run the scenario's clients against the deployment for its duration (scenario seconds,
    compressed by the deployment's speed-up); requests in flight at the end are let finish."""
    if deployment.layout != "dynamo":
        raise ValueError(
            f"{deployment.workdir}: busy thresholds act at Dynamo's frontend; start the deployment "
            "with --layout dynamo"
        )
    set_busy_thresholds(deployment, scenario)
    block_tokens = scenario.engine_for("prefill" if scenario.topology.mode == "disagg" else "agg").block_size
    streams = random_streams(scenario.seed)
    generator = SyntheticSessions(
        scenario.workload, block_tokens, streams["sessions"], policy_class_rng(scenario.seed)
    )
    assert scenario.duration_s is not None
    if scenario.workload.concurrency is None:
        done = asyncio.run(_open_loop(scenario, deployment, generator, streams["arrivals"], block_tokens))
        return _outcome(done, scenario.duration_s)
    clients = ClosedLoopClients(
        deployment.frontend_url,
        deployment.model_name,
        session_stream(generator.session),
        block_tokens,
        deployment.speedup,
        retry_after_s=scenario.workload.retry_after_s,
    )
    clients.set_clients(scenario.workload.concurrency)
    time.sleep(scenario.duration_s / deployment.speedup)
    clients.set_clients(0)
    clients.close(grace_s=30.0)
    return _outcome(clients.take(), scenario.duration_s)


async def _open_loop(
    scenario: ScenarioConfig, deployment: Deployment, generator: Any, arrivals: Any, block_tokens: int
) -> list[LiveCompletion]:
    """The simulator's open loop on the wall clock: the same session start times (the scenario
    seed's `arrivals` stream), each turn sent again `retry_after_s` after a 529, until the end."""
    import aiohttp

    speedup, end_s = deployment.speedup, float(scenario.duration_s or 0.0)
    retry_s = scenario.workload.retry_after_s
    request = (deployment.frontend_url + "/v1/completions", deployment.model_name, block_tokens)
    done: list[LiveCompletion] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        t0 = time.monotonic()

        async def session(index: int, start_s: float) -> None:
            turn = generator.session(index, start_s).turns[0]
            while True:
                completion = await send_turn(http, request, index, 0, turn)
                done.append(completion)
                if not completion.rejected or (time.monotonic() - t0) * speedup + retry_s >= end_s:
                    return
                await asyncio.sleep(retry_s / speedup)

        tasks = []
        for index, start_s in enumerate(open_loop_starts(scenario.workload, arrivals)):
            if start_s >= end_s:
                break
            await asyncio.sleep(max(0.0, t0 + start_s / speedup - time.monotonic()))
            tasks.append(asyncio.create_task(session(index, start_s)))
        await asyncio.gather(*tasks)
    return done


def _outcome(done: list[LiveCompletion], duration_s: float) -> BusyOutcome:
    ok = [c for c in done if c.ok]
    ttft = [c.ttft_s for c in ok if c.ttft_s is not None]
    failed = [c for c in done if not c.ok and not c.rejected]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed otherwise than busy: {failed[0].error}")
    rejected = sum(c.rejected for c in done)
    return BusyOutcome(len(ok), rejected, duration_s, float(np.mean(ttft)) if ttft else float("nan"))


def set_busy_thresholds(deployment: Deployment, scenario: ScenarioConfig) -> dict:
    """Put the scenario's thresholds on the frontend with `POST /busy_threshold` (the same call
    the sidecar makes); returns the frontend's answer, the thresholds now in force."""
    router = scenario.router
    body = {
        "model": deployment.model_name,
        "active_decode_blocks_threshold": router.active_decode_blocks_threshold,
        "active_prefill_tokens_threshold": router.active_prefill_tokens_threshold,
        "active_prefill_tokens_threshold_frac": router.active_prefill_tokens_threshold_frac,
    }
    request = urllib.request.Request(
        deployment.frontend_url.rstrip("/") + "/busy_threshold",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10.0) as response:
        return json.loads(response.read())


@dataclass(frozen=True, slots=True)
class SeedPair:
    """One arrival seed through both sides (`real` is None when only the simulator ran)."""

    seed: int
    sim: BusyOutcome
    real: BusyOutcome | None


@dataclass(frozen=True, slots=True)
class BusyComparison:
    """Both sides over several arrival seeds: per-seed outcomes, their means and the ratio."""

    frac: float | None
    pairs: tuple[SeedPair, ...]

    def _sims(self) -> list[BusyOutcome]:
        return [p.sim for p in self.pairs]

    def _reals(self) -> list[BusyOutcome]:
        return [p.real for p in self.pairs if p.real is not None]

    @property
    def sim_share_mean(self) -> float:
        return _mean([o.rejected_share for o in self._sims()])

    @property
    def real_share_mean(self) -> float:
        return _mean([o.rejected_share for o in self._reals()])

    @property
    def share_ratio(self) -> float:
        """Dynamo's mean turned-away share over the simulator's (the ratio of means)."""
        sim = self.sim_share_mean
        return self.real_share_mean / sim if sim > 0 else float("nan")

    @property
    def sim_completed_mean(self) -> float:
        return _mean([o.num_completed for o in self._sims()])

    @property
    def real_completed_mean(self) -> float:
        return _mean([o.num_completed for o in self._reals()])


def _mean(values: Sequence[float]) -> float:
    """NaN for a side that did not run."""
    return float(np.mean(values)) if values else float("nan")


def with_seed(scenario: ScenarioConfig, seed: int) -> ScenarioConfig:
    """The scenario drawing its arrivals and prompts from `seed`."""
    return dataclasses.replace(scenario, seed=seed)


def compare(scenario: ScenarioConfig, deployment: Deployment | None, seeds: Sequence[int]) -> BusyComparison:
    """Each seed through the simulator and (given a deployment) Dynamo, one live run at a time."""
    pairs = []
    for seed in seeds:
        seeded = with_seed(scenario, seed)
        real = live(seeded, deployment) if deployment is not None else None
        pairs.append(SeedPair(seed, simulated(seeded), real))
    return BusyComparison(scenario.router.active_prefill_tokens_threshold_frac, tuple(pairs))


def report(comparison: BusyComparison) -> str:
    """Per-seed and mean turned-away share and completed requests, simulator and Dynamo."""
    lines = [f"threshold frac {comparison.frac}: seed, turned away sim / Dynamo, completed sim / Dynamo"]
    for pair in comparison.pairs:
        real = pair.real
        real_share = _pct(real.rejected_share) if real else "-"
        real_done = str(real.num_completed) if real else "-"
        lines.append(
            f"  seed {pair.seed}: {_pct(pair.sim.rejected_share)} / {real_share}, "
            f"{pair.sim.num_completed} / {real_done}"
        )
    c = comparison
    lines.append(
        f"  mean: {_pct(c.sim_share_mean)} / {_pct(c.real_share_mean)}, "
        f"{c.sim_completed_mean:.1f} / {_num(c.real_completed_mean, '.1f')}; "
        f"ratio of mean shares Dynamo/sim {_num(c.share_ratio, '.2f')}"
    )
    return "\n".join(lines)


def _pct(share: float) -> str:
    return f"{share:.2%}" if np.isfinite(share) else "-"


def _num(value: float, spec: str) -> str:
    return format(value, spec) if np.isfinite(value) else "-"


def as_json(comparison: BusyComparison) -> dict:
    """The comparison as plain data: per-seed outcomes and the means."""

    def side(outcome: BusyOutcome | None) -> dict | None:
        if outcome is None:
            return None
        return {**dataclasses.asdict(outcome), "rejected_share": outcome.rejected_share}

    return {
        "frac": comparison.frac,
        "seeds": [{"seed": p.seed, "sim": side(p.sim), "dynamo": side(p.real)} for p in comparison.pairs],
        "sim_share_mean": comparison.sim_share_mean,
        "dynamo_share_mean": comparison.real_share_mean,
        "share_ratio": comparison.share_ratio,
        "sim_completed_mean": comparison.sim_completed_mean,
        "dynamo_completed_mean": comparison.real_completed_mean,
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval.busy_check",
        description="Busy thresholds: the simulator against Dynamo's frontend over several arrival seeds.",
    )
    parser.add_argument("scenario", nargs="?", default=SCENARIO)
    parser.add_argument(
        "--frac", type=float, action="append", help="x max_num_batched_tokens; repeatable (0.25)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="arrival seeds, from --first-seed on")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rate-rps", type=float, default=RATE_RPS)
    parser.add_argument("--duration-s", type=float, default=DURATION_S)
    parser.add_argument("--speedup", type=float, default=1.0, help="the mockers' speed-up")
    parser.add_argument("--workdir", help="a running `--layout dynamo` deployment (else one is started)")
    parser.add_argument("--sim-only", action="store_true", help="the simulator side alone")
    parser.add_argument("--json", metavar="PATH", help="also write the comparisons as JSON")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds: at least 1")
    return args


def _scenario(args: argparse.Namespace, frac: float) -> ScenarioConfig:
    from envs.scenarios import load_scenario

    scenario, _ = load_scenario(args.scenario, [f"router.active_prefill_tokens_threshold_frac={frac}"])
    return open_loop(scenario, args.rate_rps, args.duration_s)


def _run_all(args: argparse.Namespace, deployment: Deployment | None) -> list[BusyComparison]:
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    comparisons = []
    for frac in args.frac or [0.25]:
        comparison = compare(_scenario(args, frac), deployment, seeds)
        print(report(comparison), flush=True)
        comparisons.append(comparison)
    return comparisons


def main(argv: Sequence[str] | None = None) -> int:
    from envs.errors import UserError

    args = _parse(argv)
    try:
        comparisons = _comparisons(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps([as_json(c) for c in comparisons], indent=2) + "\n")
    return 0


def _comparisons(args: argparse.Namespace) -> list[BusyComparison]:
    if args.sim_only:
        comparisons = _run_all(args, None)
    elif args.workdir:
        comparisons = _run_all(args, Deployment.load(Path(args.workdir)))
    else:
        from envs.scenarios import load_scenario

        with tempfile.TemporaryDirectory(prefix="busy-check-") as tmp:
            config, _ = load_scenario(args.scenario, [])
            deployment = up(config, Path(tmp), layout="dynamo", timeout_s=120, speedup=args.speedup)
            try:
                comparisons = _run_all(args, deployment)
            finally:
                down(Path(tmp))
    return comparisons


if __name__ == "__main__":
    sys.exit(main())
