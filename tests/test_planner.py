"""Dynamo's own Planner moving workers in our simulator, checked against Dynamo's replay running
the same Planner (needs `make dynamo`).

Oracle: the reference system. On 1P/5D under 60 req/s of 2k-token prompts, the load-based
Planner (throughput target, a 6-worker budget, 5-s start-ups) reads each worker's queued prefill
tokens and KV use every 5 s; in both simulators it makes the same moves at the same ticks, and
the runs' metrics agree within the cross-check bounds.
"""

from __future__ import annotations

import time

import pytest

from agents.planner import DynamoPlannerPolicy, dynamo_planner
from envs.sim.metrics import summarize
from envs.sim.run import build_cluster, materialize_sessions, simulate
from eval.crosscheck import (
    BOUNDS,
    PLANNER_CASES,
    _simulate_with_planner,
    as_trace_scenario,
    default_grid,
    run_case,
)
from eval.dynamo_replay import dynamo_available, run_replay

pytestmark = [
    pytest.mark.dynamo,
    pytest.mark.skipif(not dynamo_available(), reason="ai-dynamo not installed (run `make dynamo`)"),
]
CASE = next(c for c in default_grid() if c.name == "1p5d-planner-throughput")


class Moves:
    """Records the scaling decisions of whatever it wraps (the replay's hook object)."""

    def __init__(self, adapter) -> None:
        self.adapter, self.moves = adapter, []

    def initial_tick_ms(self) -> float:
        return self.adapter.initial_tick_ms()

    def on_tick(self, result: dict) -> dict:
        decision = self.adapter.on_tick(result)
        if decision["target_prefill"] is not None or decision["target_decode"] is not None:
            self.moves.append(
                (result["now_ms"] / 1000.0, decision["target_prefill"], decision["target_decode"])
            )
        return decision


def test_the_planner_makes_the_same_moves_in_both_simulators():
    sessions = materialize_sessions(CASE, 64)
    with dynamo_planner(CASE, PLANNER_CASES[CASE.name]) as adapter:
        theirs = Moves(adapter)
        run_replay(CASE, sessions, 64, scaling_policy=theirs)
    with dynamo_planner(CASE, PLANNER_CASES[CASE.name]) as adapter:
        ours = Moves(adapter)
        policy = DynamoPlannerPolicy(ours)
        cluster = build_cluster(as_trace_scenario(CASE, 64), trace_sessions=sessions)
        cluster.scaler.run(policy)
        cluster.env.run()
    assert len(theirs.moves) >= 4 and {p for _, p, _ in theirs.moves} >= {1, 2}  # it did move
    assert ours.moves == theirs.moves
    assert len(cluster.records) == 3000  # every request finished across the drains


def test_the_planner_case_is_within_the_cross_check_bounds():
    result = run_case(CASE, time.perf_counter)
    for metric, bound in BOUNDS.items():
        assert abs(result.errors[metric]) <= bound, (metric, result.errors[metric])


def test_the_planner_cuts_ttft_against_the_fixed_deployment():
    """Moving workers to the prefill pool when its queue grows is the lever routing lacks."""
    sessions = materialize_sessions(CASE, 64)
    fixed = summarize(simulate(as_trace_scenario(CASE, 64), trace_sessions=sessions).records)
    records, _ = _simulate_with_planner(CASE, sessions, 64, "throughput")
    planned = summarize(records)
    assert planned.ttft_mean_s < 0.5 * fixed.ttft_mean_s, (planned.ttft_mean_s, fixed.ttft_mean_s)
