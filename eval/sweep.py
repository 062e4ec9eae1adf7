"""Sweeps: run a scenario for every policy x concurrency x seed, measure each run's steady state.

Each run is the scenario under closed-loop load with C clients, `--set` overrides applied first,
then the policy's overrides, then the concurrency and the seed. Runs are independent, so they go
to a process pool; results come back in plan order (policy, concurrency, seed), whatever the
order they finish in, so the files do not depend on `--jobs`.

Steady state: requests that arrive in [warmup_s, duration_s) are measured (the first wave of a
closed loop arrives all at once, so the start is not representative). See `eval/METRICS.md`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.policy_spec import PolicySpec
from envs.errors import ScenarioError, UserError
from envs.poa import PoaParams, estimate_poa, poa_params_for
from envs.scenarios import load_inputs, load_scenario
from envs.sim.config import ScenarioConfig
from envs.sim.metrics import Summary, summarize
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.records import RequestRecord
from envs.sim.run import simulate
from eval.sweep_results import SweepRow, nan_to_none

# 20% of the run: long enough for a closed loop's synchronised first wave to spread out (a few
# end-to-end latencies at the loads we sweep), short enough to keep most of the run measured.
DEFAULT_WARMUP_FRACTION = 0.2


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run of the plan; `index` is its place in the plan (and in the result files)."""

    index: int
    scenario: ScenarioConfig
    path: Path
    policy: str
    concurrency: int
    warmup_s: float
    poa_params: PoaParams


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """Everything a sweep runs, resolved and validated before the first run starts."""

    scenario_name: str
    scenario_source: str
    policies: tuple[PolicySpec, ...]
    concurrencies: tuple[int, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    warmup_s: float
    duration_s: float
    poa_params: PoaParams
    runs: tuple[RunSpec, ...]


def build_plan(
    scenario_source: str,
    policies: Sequence[PolicySpec],
    concurrencies: Sequence[int],
    num_seeds: int,
    overrides: Sequence[str] = (),
    duration_s: float | None = None,
    warmup_s: float | None = None,
    poa_stage: str | None = None,
    poa_window: int | None = None,
) -> SweepPlan:
    """Resolve every run's scenario (so a bad knob fails before any run starts).

    Seeds are the scenario's seed (after `--set`) plus 0, 1, ..., num_seeds - 1.

    Raises:
        UserError: a flag value that cannot work (window, seeds, a policy's knob value).
        ScenarioError: the scenario or an override is invalid.
    """
    base_overrides = [*overrides, *([f"duration_s={duration_s}"] if duration_s is not None else [])]
    base, path = load_scenario(scenario_source, base_overrides)
    run_duration_s, warmup = _window(base, warmup_s)
    poa_params = _poa_params(base, path, poa_stage, poa_window)
    seeds = tuple(base.seed + i for i in range(num_seeds))
    runs: list[RunSpec] = []
    for policy in policies:
        for concurrency in concurrencies:
            for seed in seeds:
                run_overrides = [
                    *base_overrides,
                    *policy.overrides,
                    *_load_overrides(base, concurrency),
                    *_noise_overrides(base, policy),
                ]
                scenario = _policy_scenario(scenario_source, [*run_overrides, f"seed={seed}"], policy)
                runs.append(RunSpec(len(runs), scenario, path, policy.name, concurrency, warmup, poa_params))
    return SweepPlan(
        base.name,
        scenario_source,
        tuple(policies),
        tuple(concurrencies),
        seeds,
        tuple(overrides),
        warmup,
        run_duration_s,
        poa_params,
        tuple(runs),
    )


def _window(scenario: ScenarioConfig, warmup_s: float | None) -> tuple[float, float]:
    """The measured window's (duration_s, warmup_s), checked."""
    if scenario.duration_s is None:
        raise UserError(f"{scenario.name}: a sweep measures a time window; set --duration-s")
    if scenario.workload.num_requests is not None:
        raise UserError(
            f"{scenario.name}: workload.num_requests would end runs before duration_s; "
            "add --set workload.num_requests=null"
        )
    duration_s = scenario.duration_s
    warmup = DEFAULT_WARMUP_FRACTION * duration_s if warmup_s is None else warmup_s
    if not (0 <= warmup < duration_s):
        raise UserError(f"--warmup-s {warmup:g} must be in [0, duration_s = {duration_s:g})")
    return duration_s, warmup


def _load_overrides(scenario: ScenarioConfig, concurrency: int) -> list[str]:
    # A trace with `concurrency` set is already replayed closed loop (its own sessions).
    arrival = [] if scenario.workload.arrival == "trace" else ["workload.arrival=closed_loop"]
    return [*arrival, f"workload.concurrency={concurrency}"]


def _noise_overrides(scenario: ScenarioConfig, policy: PolicySpec) -> list[str]:
    # With timing noise on, each policy gets its own noise realisation (a stable function of its
    # name), as each setting of the paper's grid was a separate run on the cluster; the workload
    # stays common to all policies of a seed.
    if scenario.timing.step_time_cv <= 0:
        return []
    stream = scenario.timing.noise_stream + zlib.crc32(policy.name.encode())
    return [f"timing.noise_stream={stream}"]


def _policy_scenario(source: str, overrides: list[str], policy: PolicySpec) -> ScenarioConfig:
    try:
        scenario, _ = load_scenario(source, overrides)
    except ScenarioError as error:
        raise UserError(f"--policies {policy.name}: {error}") from None
    return scenario


def _poa_params(scenario: ScenarioConfig, path: Path, stage: str | None, window: int | None) -> PoaParams:
    profile: ProfileArrays | None = load_inputs(scenario, path).profile
    try:
        return poa_params_for(scenario, profile, stage, window)
    except ValueError as error:
        raise UserError(f"--poa-stage/--poa-window: {error}") from None


def run_one(run: RunSpec) -> SweepRow:
    """Simulate one run and measure its steady-state window (runs in a worker process)."""
    scenario = run.scenario
    assert scenario.duration_s is not None  # build_plan checked
    inputs = load_inputs(scenario, run.path)
    result = simulate(scenario, trace_sessions=inputs.trace_sessions, profile=inputs.profile)
    summary, num_completed = steady_state_summary(result.records, run.warmup_s, scenario.duration_s)
    # PoA-hat sees every record (in-flight load) but prices only decisions inside the window.
    poa = estimate_poa(result.records, run.poa_params, start_s=run.warmup_s, end_s=scenario.duration_s)
    seconds = {
        name: nan_to_none(getattr(summary, name))
        for name in ("ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "itl_mean_s", "itl_p50_s", "itl_p99_s")
    }
    return SweepRow(
        scenario=scenario.name,
        policy=run.policy,
        seed=scenario.seed,
        concurrency=run.concurrency,
        poa_hat=nan_to_none(poa.poa_hat),
        poa_window_median=nan_to_none(poa.window_median),
        poa_window_p90=nan_to_none(poa.window_p90),
        poa_num_windows=poa.num_windows,
        poa_num_decisions=poa.num_decisions,
        poa_stage=poa.stage,
        **seconds,
        e2e_mean_s=nan_to_none(summary.e2e_mean_s),
        e2e_p99_s=nan_to_none(summary.e2e_p99_s),
        throughput_rps=summary.throughput_rps,
        output_tok_s=summary.output_tok_s,
        prefix_reuse_ratio=nan_to_none(summary.prefix_reuse_ratio),
        num_requests=summary.num_requests,
        num_completed=num_completed,
        num_preemptions=summary.num_preemptions,
        warmup_s=run.warmup_s,
        duration_s=scenario.duration_s,
        sim_time_s=result.sim_time_s,
    )


def steady_state_summary(
    records: Sequence[RequestRecord], warmup_s: float, duration_s: float
) -> tuple[Summary, int]:
    """The summary of requests arriving in [warmup_s, duration_s), and how many completed there.

    Latencies are those requests'. ITL percentiles come from their per-request mean gaps (each
    weighted by its number of gaps): the engines' pooled gap statistics carry no timestamps, so
    they cannot be cut to the window. Throughput counts completions inside the window over its
    length, which is unbiased in steady state (arrival-based counts would include the drain).
    """
    measured = [r for r in records if warmup_s <= r.arrival_s < duration_s]
    completed = [r for r in records if warmup_s <= r.last_token_s < duration_s]
    span_s = duration_s - warmup_s
    summary = dataclasses.replace(
        summarize(measured),
        duration_s=span_s,
        throughput_rps=len(completed) / span_s,
        output_tok_s=sum(r.output_tokens for r in completed) / span_s,
    )
    return summary, len(completed)


def run_sweep(
    plan: SweepPlan,
    jobs: int,
    on_run_done: Callable[[SweepRow], None] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> list[SweepRow]:
    """Run every run of the plan on `jobs` processes, or as Ray tasks (`engine="ray"`, on a local
    instance or the cluster at `ray_address`); rows come back in plan order either way."""
    rows: list[SweepRow | None] = [None] * len(plan.runs)
    notify = on_run_done or (lambda row: None)
    if engine == "ray":
        from training.ray_engine import map_on_ray

        return map_on_ray(run_one, plan.runs, ray_address, lambda _, row: notify(row))
    if jobs <= 1 or len(plan.runs) <= 1:
        for run in plan.runs:
            rows[run.index] = row = run_one(run)
            notify(row)
    else:
        with ProcessPoolExecutor(max_workers=min(jobs, len(plan.runs))) as pool:
            futures = {pool.submit(run_one, run): run.index for run in plan.runs}
            try:
                for future in as_completed(futures):
                    rows[futures[future]] = row = future.result()
                    notify(row)
            except BaseException:
                pool.shutdown(cancel_futures=True)  # Ctrl-C or a failed run: stop queued runs
                raise
    return [row for row in rows if row is not None]


# -- aggregation over seeds ------------------------------------------------------------------

AGGREGATED = (
    "poa_hat",
    "ttft_p50_s",
    "ttft_p99_s",
    "itl_p99_s",
    "e2e_p99_s",
    "throughput_rps",
    "output_tok_s",
    "prefix_reuse_ratio",
)


@dataclass(frozen=True, slots=True)
class PolicyPoint:
    """One policy at one concurrency, over its seeds: mean, min and max of each metric (None
    where no seed measured it)."""

    policy: str
    concurrency: int
    num_seeds: int
    mean: dict[str, float | None]
    low: dict[str, float | None]
    high: dict[str, float | None]


def aggregate(rows: Sequence[SweepRow]) -> list[PolicyPoint]:
    """Group rows by (policy, concurrency), in the order first seen."""
    groups: dict[tuple[str, int], list[SweepRow]] = {}
    for row in rows:
        groups.setdefault((row.policy, row.concurrency), []).append(row)
    points = []
    for (policy, concurrency), group in groups.items():
        stats = {name: _stats([getattr(row, name) for row in group]) for name in AGGREGATED}
        points.append(
            PolicyPoint(
                policy,
                concurrency,
                len(group),
                {name: s[0] for name, s in stats.items()},
                {name: s[1] for name, s in stats.items()},
                {name: s[2] for name, s in stats.items()},
            )
        )
    return points


def _stats(values: list[float | None]) -> tuple[float | None, float | None, float | None]:
    present = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if present.size == 0:
        return None, None, None
    return float(present.mean()), float(present.min()), float(present.max())
