"""Run a scenario: seed the random streams, build the workload and the cluster, simulate."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from envs.sim.busy import Rejection
from envs.sim.cluster import Cluster, ProgressHook
from envs.sim.config import ScenarioConfig
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.records import RequestRecord
from envs.sim.scaling import ScheduledScaling
from envs.sim.sequence import EngineStats
from envs.sim.timing import make_timing
from envs.sim.workload import Session, SyntheticSessions, load_at, open_loop_starts

STREAMS = ("arrivals", "sessions", "routing")


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one run produced: per-request records plus each engine's pass statistics."""

    records: tuple[RequestRecord, ...]
    engine_stats: tuple[EngineStats, ...]
    sim_time_s: float
    rejections: tuple[Rejection, ...] = ()  # requests Dynamo's busy thresholds turned away


def random_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent named streams: the workload never depends on routing randomness."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children, strict=True)}


def hardware_noise_rng(seed: int, noise_stream: int) -> np.random.Generator:
    """The timing-noise stream: a child of the seed beside the named streams (which it leaves
    unchanged), one per `noise_stream`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(len(STREAMS), noise_stream)))


def policy_class_rng(seed: int) -> np.random.Generator:
    """The stream that picks each session's router policy class (`workload.policy_class_mix`),
    beside the named streams, which it leaves unchanged."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(len(STREAMS) + 1,)))


def build_cluster(
    scenario: ScenarioConfig,
    trace_sessions: Iterable[Session] | None = None,
    profile: ProfileArrays | None = None,
) -> Cluster:
    """A ready-to-run cluster with its workload started (nothing simulated yet)."""
    streams = random_streams(scenario.seed)
    workload = scenario.workload
    if workload.arrival == "trace":
        if trace_sessions is None:
            raise ValueError("arrival 'trace' needs the trace's sessions (load them with envs.traces)")
        sessions: Iterator[Session] = iter(trace_sessions)
        block_tokens = workload.trace_block_tokens
    else:
        block_tokens = scenario.engine_for(
            "prefill" if scenario.topology.mode == "disagg" else "agg"
        ).block_size
        generator = SyntheticSessions(
            workload, block_tokens, streams["sessions"], policy_class_rng(scenario.seed)
        )
        sessions = (generator.session(i, 0.0) for i in itertools.count())
    noise = hardware_noise_rng(scenario.seed, scenario.timing.noise_stream)
    timing = make_timing(scenario.timing, profile, noise)
    cluster = Cluster(scenario, sessions, timing, streams["routing"], block_tokens)
    if workload.concurrency is not None:
        base = workload.concurrency
        steps = workload.load_schedule
        cluster.start_closed_loop(lambda t: round(load_at(steps, base, t)), [s.at_s for s in steps])
    else:
        cluster.start_open_loop(open_loop_starts(workload, streams["arrivals"]))
    if scenario.scaling.schedule:
        cluster.scaler.run(ScheduledScaling(scenario.scaling.schedule))
    return cluster


def simulate(
    scenario: ScenarioConfig,
    trace_sessions: Iterable[Session] | None = None,
    profile: ProfileArrays | None = None,
    progress: ProgressHook | None = None,
) -> SimResult:
    """Simulate a scenario to the end: no new requests after `duration_s` (or `num_requests`),
    then every request in flight finishes."""
    cluster = build_cluster(scenario, trace_sessions, profile)
    if progress is not None:
        cluster.on_progress(progress)
    cluster.env.run()
    return SimResult(
        tuple(cluster.records),
        tuple(e.stats for e in cluster.engines),
        cluster.env.now,
        tuple(cluster.rejections),
    )


def materialize_sessions(scenario: ScenarioConfig, block_tokens: int) -> list[Session]:
    """The scenario's synthetic workload as a finite list of sessions with start times
    (closed-loop sessions start when a client frees up, so theirs are 0)."""
    workload = scenario.workload
    if workload.num_requests is None:
        raise ValueError(f"{scenario.name}: materialising a workload needs workload.num_requests")
    streams = random_streams(scenario.seed)
    generator = SyntheticSessions(
        workload, block_tokens, streams["sessions"], policy_class_rng(scenario.seed)
    )
    num_sessions = -(-workload.num_requests // workload.turns_per_session)
    if workload.concurrency is None:
        starts: Iterator[float] = open_loop_starts(workload, streams["arrivals"])
    else:
        starts = itertools.repeat(0.0)
    return [generator.session(i, start) for i, start in zip(range(num_sessions), starts, strict=False)]
