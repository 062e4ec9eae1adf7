"""`poa-gym eval`'s engine: best-static searches, then every policy x eval seed, in a process pool.

Episodes are independent, so they run in worker processes; results are put back in plan order
(policy, seed), so the files do not depend on `--jobs`. Every policy sees the same seeds, and so
the same workload and the same GPU-timing noise (common random numbers): differences between
policies are the policies', not the dice's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from agents.episodes import (
    EVAL_SEED_BASE,
    EpisodeResult,
    EpisodeSetup,
    PhaseSummary,
    run_episode,
    search_grid,
)

ProgressHook = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class SearchPoint:
    """One knob setting of the best-static search and its mean episode reward on search seeds."""

    values: Mapping[str, float]
    mean_reward: float


@dataclass(frozen=True, slots=True)
class Evaluation:
    setup: EpisodeSetup
    policies: tuple[str, ...]
    seeds: tuple[int, ...]
    episodes: tuple[tuple[str, int, EpisodeResult], ...]  # (policy, seed, result) in plan order
    search: tuple[SearchPoint, ...]  # empty unless best-static was asked for
    defaults: Mapping[str, float]  # the scenario's own knob values

    @property
    def best_static(self) -> Mapping[str, float] | None:
        return best_point(self.search, self.defaults) if self.search else None

    def seed_rewards(self) -> dict[str, list[float]]:
        """Per policy, each eval seed's episode reward (the mean over its intervals), in seed order:
        what "better on every eval seed" is judged on."""
        by_key = {(name, seed): result.mean_reward for name, seed, result in self.episodes}
        return {policy: [by_key[policy, seed] for seed in self.seeds] for policy in self.policies}

    def summary(self) -> list[PhaseSummary]:
        """Per policy and phase, the mean over seeds (seed = -1 marks an aggregate)."""
        rows = []
        for policy in self.policies:
            phases: dict[str, list[PhaseSummary]] = {}
            for name, _, result in self.episodes:
                if name == policy:
                    for phase in result.phases:
                        phases.setdefault(phase.phase, []).append(phase)
            rows += [_mean_phase(policy, items) for items in phases.values()]
        return rows


def margin_pct(mine: float, theirs: float) -> float:
    """How much higher (better) reward `mine` is than `theirs`, in % of |theirs|; NaN where
    `theirs` is about 0 (a ratio to it means nothing)."""
    return 100.0 * (mine - theirs) / abs(theirs) if abs(theirs) > 1e-9 else math.nan


def _mean_phase(policy: str, items: Sequence[PhaseSummary]) -> PhaseSummary:
    def mean(field: str) -> float:
        values = [getattr(item, field) for item in items if math.isfinite(getattr(item, field))]
        return float(np.mean(values)) if values else math.nan

    return PhaseSummary(
        policy=policy,
        seed=-1,
        phase=items[0].phase,
        num_intervals=items[0].num_intervals,
        poa_hat=mean("poa_hat"),
        ttft_p99_s=mean("ttft_p99_s"),
        itl_p99_s=mean("itl_p99_s"),
        throughput_rps=mean("throughput_rps"),
        mean_reward=mean("mean_reward"),
    )


def best_point(search: Sequence[SearchPoint], defaults: Mapping[str, float]) -> Mapping[str, float]:
    """The highest mean reward; among equals, the setting nearest the scenario's own, so that a
    knob with no effect is left where an operator found it rather than at the grid's corner."""

    def distance(point: SearchPoint) -> float:
        return sum(abs(value - defaults[name]) for name, value in point.values.items())

    return max(search, key=lambda p: (p.mean_reward, -distance(p))).values


def eval_seeds(num_seeds: int, base: int = EVAL_SEED_BASE) -> tuple[int, ...]:
    return tuple(base + i for i in range(num_seeds))


def evaluate(
    setup: EpisodeSetup,
    policies: Sequence[str],
    num_seeds: int,
    jobs: int,
    search_values: Mapping[str, Sequence[float]] | None = None,
    num_search_seeds: int = 1,
    progress: ProgressHook | None = None,
    seed_base: int = EVAL_SEED_BASE,
) -> Evaluation:
    """Run the evaluation; `search_values` (knob -> values) is the best-static grid; training's
    model selection passes its own `seed_base` (validation seeds, disjoint from the test's)."""
    seeds = eval_seeds(num_seeds, seed_base)
    defaults = setup.env().default_values
    search: tuple[SearchPoint, ...] = ()
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        if "best-static" in policies:
            if not search_values:
                raise ValueError("best-static needs a search grid")
            search = _search(pool, setup, search_values, num_search_seeds, progress)
        best = best_point(search, defaults) if search else None
        plan = [(name, seed) for name in policies for seed in seeds]
        futures = [
            pool.submit(run_episode, setup, name, seed, best if name == "best-static" else None)
            for name, seed in plan
        ]
        episodes = []
        for (name, seed), future in zip(plan, futures, strict=True):
            episodes.append((name, seed, future.result()))
            if progress:
                progress(f"{name} seed {seed}")
    return Evaluation(setup, tuple(policies), seeds, tuple(episodes), search, defaults)


def _search(
    pool: ProcessPoolExecutor,
    setup: EpisodeSetup,
    search_values: Mapping[str, Sequence[float]],
    num_seeds: int,
    progress: ProgressHook | None,
) -> tuple[SearchPoint, ...]:
    """Every grid point on the search seeds (0..n-1, disjoint from the eval seeds)."""
    points = search_grid(search_values)
    futures = [
        [pool.submit(run_episode, setup, "default", seed, values) for seed in range(num_seeds)]
        for values in points
    ]
    results = []
    for values, seed_futures in zip(points, futures, strict=True):
        rewards = [future.result().mean_reward for future in seed_futures]
        results.append(SearchPoint(values, float(np.mean(rewards))))
        if progress:
            progress("search " + ",".join(f"{k}={v:g}" for k, v in values.items()))
    return tuple(results)
