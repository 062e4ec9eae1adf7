"""Environment speed: `PoAGym/DisaggRouting-v0` steps per wall-second on one core.

The environment is built in this process (no vector env, no workers), reset with a fixed seed,
and `num_steps` steps of the scenario's own knobs are timed; the best of `repeats` rollouts
counts (the machines are shared: best-of is the least noisy). A step is one control interval:
simulating `interval_s` of the deployment under constant closed-loop load, then building the
observation and the reward (PoA-hat over the interval's decisions).

Two one-off costs stay out of the timing: the reset's warm-up simulation, and the default
router's reference throughput, which the reward measures lazily (one short simulation per load
level) on the first step that needs it; an untimed step primes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from envs.disagg_env import DisaggRoutingEnv
from envs.scenarios import load_scenario
from envs.sim.knobs import knob_values, override_to_action

_SEED = 0


@dataclass(frozen=True, slots=True)
class EnvBenchResult:
    """One benchmark: the best of `repeats` rollouts of `num_steps` steps."""

    scenario: str
    concurrency: int
    interval_s: float
    num_steps: int
    repeats: int
    wall_s: float  # the best rollout's wall time, steps only
    steps_per_s: float  # num_steps / wall_s
    num_requests: int  # requests finished during that rollout's steps
    sim_requests_per_s: float  # num_requests / wall_s


def bench_env(
    scenario: str = "llama70b-b200-1p5d", concurrency: int = 256, num_steps: int = 40, repeats: int = 3
) -> EnvBenchResult:
    """Time `num_steps` environment steps at constant `concurrency` clients (see the module doc)."""
    if num_steps < 1 or repeats < 1 or concurrency < 1:
        raise ValueError("bench_env needs num_steps, repeats and concurrency >= 1")
    env = DisaggRoutingEnv(
        {
            "scenario": scenario,
            "schedule": {"kind": "constant", "low": concurrency, "high": concurrency},
            "num_intervals": num_steps,
        }
    )
    router = load_scenario(scenario)[0].router
    action = override_to_action(knob_values(router), env.knobs)
    env.reset(seed=_SEED)
    env.step(action)  # primes the reward's reference throughput (see the module doc)
    best_wall_s = float("inf")
    best_requests = 0
    for _ in range(repeats):
        wall_s, num_requests = _timed_rollout(env, action, num_steps)
        if wall_s < best_wall_s:
            best_wall_s, best_requests = wall_s, num_requests
    return EnvBenchResult(
        scenario=scenario,
        concurrency=concurrency,
        interval_s=env.config.interval_s,
        num_steps=num_steps,
        repeats=repeats,
        wall_s=best_wall_s,
        steps_per_s=num_steps / best_wall_s,
        num_requests=best_requests,
        sim_requests_per_s=best_requests / best_wall_s,
    )


def _timed_rollout(env: DisaggRoutingEnv, action: np.ndarray, num_steps: int) -> tuple[float, int]:
    """Reset (untimed), then step `num_steps` times; returns (wall seconds, requests finished)."""
    env.reset(seed=_SEED)
    num_requests = 0
    start = time.perf_counter()
    for _ in range(num_steps):
        _, _, _, _, info = env.step(action)
        num_requests += info["num_finished"]
    return time.perf_counter() - start, num_requests


def format_env_bench(result: EnvBenchResult) -> str:
    """A few human-readable lines."""
    return "\n".join(
        [
            f"env bench: {result.scenario}, {result.concurrency} closed-loop clients, "
            f"{result.interval_s:g}-s intervals",
            f"  {result.steps_per_s:.2f} steps/s on one core "
            f"({result.num_steps} steps in {result.wall_s:.2f} s, best of {result.repeats})",
            f"  {result.sim_requests_per_s:,.0f} simulated requests/s "
            f"({result.num_requests} requests, {result.num_requests / result.num_steps:.0f} per step)",
        ]
    )
