"""Rollout throughput on Ray: `poa-gym bench --rollouts --workers 1,2,4`.

N one-CPU Ray tasks each build the environment (the training config's, 3P/3D multi-turn under a
ramp) and step it `num_steps` times with the scenario's own knobs. Two throughputs: all their
steps over the wall time from submission to the last result (Ray's scheduling and each task's
environment construction count), and over the slowest task's own stepping time (they do not).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ENV_CONFIG = {
    "scenarios": ["llama70b-b200-3p3d-multiturn"],
    "schedules": [{"kind": "ramp", "low": 32, "high": 256}],
    "num_intervals": 1000,
}


@dataclass(frozen=True, slots=True)
class RolloutBench:
    num_workers: int
    num_steps: int  # in all
    wall_s: float
    steps_per_s: float  # over the wall time
    stepping_steps_per_s: float  # over the slowest task's stepping time
    speedup: float  # wall throughput over one worker's, in this run


def rollout(task: tuple[int, int]) -> float:
    """Step a fresh environment `num_steps` times; the stepping's own seconds."""
    from envs.disagg_env import DisaggRoutingEnv
    from envs.sim.knobs import override_to_action

    seed, num_steps = task
    env = DisaggRoutingEnv(dict(ENV_CONFIG))
    env.reset(seed=seed)
    action = override_to_action(env.default_values, env.knobs)
    start_s = time.perf_counter()
    for _ in range(num_steps):
        env.step(action)
    return time.perf_counter() - start_s


def bench_rollouts(workers: list[int], steps_per_worker: int, address: str | None) -> list[RolloutBench]:
    import ray

    from training.ray_engine import init_ray, map_on_ray

    started = init_ray(address, min_cpus=max(workers))
    try:
        map_on_ray(rollout, [(0, 2)] * max(workers), address)  # warm the worker processes
        results = []
        for num_workers in workers:
            tasks = [(seed, steps_per_worker) for seed in range(num_workers)]
            start_s = time.perf_counter()
            stepping_s = map_on_ray(rollout, tasks, address)
            wall_s = time.perf_counter() - start_s
            total = num_workers * steps_per_worker
            base = results[0].steps_per_s if results else total / wall_s
            results.append(
                RolloutBench(
                    num_workers,
                    total,
                    wall_s,
                    total / wall_s,
                    total / max(stepping_s),
                    (total / wall_s) / base,
                )
            )
        return results
    finally:
        if started:
            ray.shutdown()
