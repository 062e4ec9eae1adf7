"""Simulator speed: simulated requests per wall-second, ours against Dynamo's replay.

Both simulators run the same materialised workload in the same process, alternately, and the
best of `repeats` runs counts for each (the machines are shared: best-of is the least noisy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from envs.sim.config import KvTransferConfig, ScenarioConfig, TopologyConfig, WorkloadConfig
from envs.sim.run import materialize_sessions, simulate
from eval.crosscheck import as_trace_scenario
from eval.dynamo_replay import dynamo_available, run_replay


@dataclass(frozen=True, slots=True)
class BenchResult:
    scenario: str
    num_requests: int
    ours_rps: float
    dynamo_rps: float | None
    ours_wall_s: float
    dynamo_wall_s: float | None
    sim_time_s: float

    @property
    def ratio(self) -> float | None:
        return self.ours_rps / self.dynamo_rps if self.dynamo_rps else None


def bench_scenario(num_requests: int = 5000) -> ScenarioConfig:
    """1P/5D, a closed loop of 256 clients: the prefill worker and every decode worker stay busy."""
    return ScenarioConfig(
        name="bench-1p5d-closed256",
        seed=11,
        topology=TopologyConfig(
            mode="disagg",
            num_prefill_workers=1,
            num_decode_workers=5,
            kv_transfer=KvTransferConfig(bandwidth_gbps=64),
        ),
        workload=WorkloadConfig(
            arrival="closed_loop",
            concurrency=256,
            num_requests=num_requests,
            isl_tokens=1024,
            osl_tokens=128,
            isl_jitter=0.25,
            osl_jitter=0.25,
            shared_prefix_ratio=0.5,
            num_prefix_groups=16,
        ),
    )


def run_bench(
    scenario: ScenarioConfig | None = None, repeats: int = 3, with_dynamo: bool = True
) -> BenchResult:
    scenario = scenario or bench_scenario()
    block_tokens = scenario.engine.block_size
    sessions = materialize_sessions(scenario, block_tokens)
    trace_scenario = as_trace_scenario(scenario, block_tokens)
    use_dynamo = with_dynamo and dynamo_available()
    ours_best = dynamo_best = float("inf")
    num_requests = 0
    sim_time_s = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        result = simulate(trace_scenario, trace_sessions=sessions)
        ours_best = min(ours_best, time.perf_counter() - start)
        num_requests, sim_time_s = len(result.records), result.sim_time_s
        if use_dynamo:
            start = time.perf_counter()
            run_replay(scenario, sessions, block_tokens)
            dynamo_best = min(dynamo_best, time.perf_counter() - start)
    return BenchResult(
        scenario=scenario.name,
        num_requests=num_requests,
        ours_rps=num_requests / ours_best,
        dynamo_rps=num_requests / dynamo_best if use_dynamo else None,
        ours_wall_s=ours_best,
        dynamo_wall_s=dynamo_best if use_dynamo else None,
        sim_time_s=sim_time_s,
    )
