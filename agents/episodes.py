"""Episodes: a named policy drives the environment through a load schedule, interval by interval.

One code path for every policy: the environment is built with the policy's scenario overrides
(router mode, startup-only knobs), then `policy.predict` sets the knobs every interval. Each
episode yields per-interval rows (the trace) and per-phase summaries, where a phase is the set
of intervals whose client count lies below, inside or past the knee band.

Seeds: evaluation episodes use `EVAL_SEED_BASE + i`; searches (best-static) and training use
seeds below it, so no evaluation episode was seen while tuning.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from agents.base import PolicyContext, StaticPolicy
from agents.registry import resolve
from envs.disagg_env import DisaggRoutingEnv
from envs.reward import RewardConfig
from envs.schedules import ScheduleConfig
from envs.sim.metrics import percentile, summarize
from envs.sim.records import RequestRecord

EVAL_SEED_BASE = 1_000_000
PHASES: tuple[str, ...] = ("below", "knee", "saturated", "all")


@dataclass(frozen=True, slots=True)
class EpisodeSetup:
    """What every episode of an evaluation shares; validated on construction."""

    scenario: str
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    num_intervals: int = 60
    interval_s: float = 5.0
    warmup_s: float = 10.0
    overrides: tuple[str, ...] = ()
    knee_band: tuple[int, int] = (96, 128)  # the paper's knee: C in (96, 128]
    knobs: tuple[tuple[str, float, float], ...] | None = None  # None: the environment's default
    # The reward episodes are scored by: a training run's own (its validation), or eval's --reward.
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        low, high = self.knee_band
        if not 0 < low < high:
            raise ValueError(f"knee_band needs 0 < low < high, got {self.knee_band}")
        if self.num_intervals < 1 or not self.interval_s > 0:
            raise ValueError("an episode needs num_intervals >= 1 and interval_s > 0")

    def env(self, policy_overrides: Sequence[str] = ()) -> DisaggRoutingEnv:
        return DisaggRoutingEnv(
            {
                "scenario": self.scenario,
                "schedule": self.schedule,
                "num_intervals": self.num_intervals,
                "interval_s": self.interval_s,
                "warmup_s": self.warmup_s,
                "overrides": (*self.overrides, *policy_overrides),
                "knobs": self.knobs,
                "reward": self.reward,
            }
        )

    def phase(self, concurrency: int) -> str:
        low, high = self.knee_band
        return "below" if concurrency <= low else "knee" if concurrency <= high else "saturated"


@dataclass(frozen=True, slots=True)
class IntervalRow:
    """One control interval of one episode (a row of `traces.csv`)."""

    policy: str
    seed: int
    interval: int
    time_s: float
    concurrency: int
    phase: str
    regime: str
    knobs: Mapping[str, float]
    poa_hat: float
    ttft_p99_s: float
    itl_p99_s: float
    throughput_rps: float
    reward: float


@dataclass(frozen=True, slots=True)
class PhaseSummary:
    """One phase of one episode: PoA-hat is the median over its intervals; latencies pool the
    requests that finished in them; throughput is those requests over the phase's time."""

    policy: str
    seed: int
    phase: str
    num_intervals: int
    poa_hat: float
    ttft_p99_s: float
    itl_p99_s: float
    throughput_rps: float
    mean_reward: float


@dataclass(frozen=True, slots=True)
class EpisodeResult:
    rows: tuple[IntervalRow, ...]
    phases: tuple[PhaseSummary, ...]

    @property
    def mean_reward(self) -> float:
        return float(np.mean([row.reward for row in self.rows]))


def run_episode(
    setup: EpisodeSetup, name: str, seed: int, values: Mapping[str, float] | None = None
) -> EpisodeResult:
    """One episode of the named policy (`values`: the knob values of a searched best-static)."""
    named = resolve(name)
    env = setup.env(named.overrides)
    if named.scaling is not None:
        env.set_scaling(named.scaling)
    context = PolicyContext.from_env(env)
    policy = StaticPolicy(name, context, dict(values)) if values is not None else named.build(context)
    try:
        rows = _rollout(env, policy, name, seed, setup)
    finally:
        env.close()
    return EpisodeResult(tuple(rows), _phase_summaries(rows, env.records, setup))


def _rollout(
    env: DisaggRoutingEnv, policy: Any, name: str, seed: int, setup: EpisodeSetup
) -> list[IntervalRow]:
    observation, _ = env.reset(seed=seed)
    start = np.array([True])
    rows: list[IntervalRow] = []
    for interval in range(setup.num_intervals):
        action, _ = policy.predict(observation, episode_start=start, deterministic=True)
        start = np.array([False])
        regime = policy.regime() if hasattr(policy, "regime") else ""
        observation, reward, _, _, info = env.step(action)
        rows.append(
            IntervalRow(
                policy=name,
                seed=seed,
                interval=interval,
                time_s=info["time_s"],
                concurrency=info["concurrency"],
                phase=setup.phase(info["concurrency"]),
                regime=regime,
                knobs=dict(info["knobs"]),
                poa_hat=info["poa_hat"],
                ttft_p99_s=info["ttft_p99_s"],
                itl_p99_s=info["itl_p99_s"],
                throughput_rps=info["throughput_rps"],
                reward=float(reward),
            )
        )
    return rows


def _phase_summaries(
    rows: Sequence[IntervalRow], records: Sequence[RequestRecord], setup: EpisodeSetup
) -> tuple[PhaseSummary, ...]:
    summaries = []
    start_s = rows[0].time_s - setup.interval_s
    by_interval: dict[int, list[RequestRecord]] = {}
    for record in records:
        interval = math.floor((record.last_token_s - start_s) / setup.interval_s)
        by_interval.setdefault(interval, []).append(record)
    for phase in PHASES:
        chosen = [row for row in rows if phase in ("all", row.phase)]
        if not chosen:
            continue
        finished = [r for row in chosen for r in by_interval.get(row.interval, [])]
        latency = summarize(finished)
        poa = [row.poa_hat for row in chosen if math.isfinite(row.poa_hat)]
        summaries.append(
            PhaseSummary(
                policy=chosen[0].policy,
                seed=chosen[0].seed,
                phase=phase,
                num_intervals=len(chosen),
                poa_hat=percentile(poa, 50) if poa else math.nan,
                ttft_p99_s=latency.ttft_p99_s,
                itl_p99_s=latency.itl_p99_s,
                throughput_rps=len(finished) / (len(chosen) * setup.interval_s),
                mean_reward=float(np.mean([row.reward for row in chosen])),
            )
        )
    return tuple(summaries)


def search_grid(knob_values: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every point of the cross product (the first knob varies slowest)."""
    names = list(knob_values)
    return [dict(zip(names, point, strict=True)) for point in itertools.product(*knob_values.values())]


def default_search_grid(setup: EpisodeSetup) -> dict[str, tuple[float, ...]]:
    """Low, middle and high of each knob's range: 9 settings under v0.9, 27 under 1.6.1."""
    env = setup.env()
    return {k.name: (k.low, (k.low + k.high) / 2, k.high) for k in env.knobs}


def row_dict(item: IntervalRow | PhaseSummary) -> dict[str, Any]:
    data = asdict(item)
    knobs = data.pop("knobs", None) or {}
    return {**data, **{f"knob_{name}": value for name, value in knobs.items()}}
