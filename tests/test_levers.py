"""The environment's P/D lever and Dynamo's Planner as an episode policy.

Oracles: the lever's rules by hand (its value rounded, applied only every `lever_every` intervals,
the rest of the budget to decode), the config errors naming the field, twin episodes for
determinism, and the Planner moving workers inside an episode as it does in Dynamo's replay
(tests/test_planner.py) while every request still finishes.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents.episodes import EpisodeSetup, run_episode
from envs.disagg_env import DisaggRoutingEnv
from envs.schedules import ScheduleConfig
from eval.dynamo_replay import dynamo_available

SCENARIO = "llama70b-b200-1p5d-budget6"
KNOBS = [["overlap_score_weight", 0, 2], ["router_temperature", 0, 1], ["num_prefill_workers", 1, 5]]


def env(**extra) -> DisaggRoutingEnv:
    config = {
        "scenario": SCENARIO,
        "num_intervals": 8,
        "schedule": ScheduleConfig(kind="constant", low=256, high=256),
        "knobs": KNOBS,
        "lever_every": 3,
        **extra,
    }
    return DisaggRoutingEnv(config)


def lever_action(num_prefill: float) -> np.ndarray:
    return np.array([0.0, -1.0, 2 * (num_prefill - 1) / 4 - 1], dtype=np.float32)


def test_the_lever_moves_the_split_every_lever_every_intervals():
    e = env()
    e.reset(seed=3)
    scaler = e._cluster.scaler
    e.step(lever_action(3.2))  # interval 0: rounds to 3, applied
    assert (scaler.view("prefill").num_serving, scaler.view("decode").num_serving) == (3, 3)
    e.step(lever_action(5.0))  # interval 1: not a lever interval
    e.step(lever_action(5.0))
    assert scaler.view("prefill").num_serving == 3
    e.step(lever_action(1.6))  # interval 3: rounds to 2
    assert (scaler.view("prefill").num_serving, scaler.view("decode").num_serving) == (2, 4)


def test_three_prefill_workers_cut_saturated_ttft_and_lose_no_request():
    runs = {}
    for num_prefill in (1, 3):
        e = env()
        e.reset(seed=5)
        infos = [e.step(lever_action(num_prefill))[4] for _ in range(8)]
        runs[num_prefill] = np.mean([i["ttft_p99_s"] for i in infos[4:]])
        records = e.records
        assert len({r.request_id for r in records}) == len(records)
    assert runs[3] * 2 < runs[1], runs  # the single prefill worker was the bottleneck


def test_twin_episodes_with_the_lever_are_identical():
    trails = []
    for _ in range(2):
        e = env()
        observation, _ = e.reset(seed=9)
        trail = [observation.tolist()]
        for k in range(6):
            observation, reward, *_ = e.step(lever_action(1 + k % 5))
            trail += [observation.tolist(), reward]
        trails.append(trail)
    assert trails[0] == trails[1]


@pytest.mark.parametrize(
    ("scenario", "knobs", "message"),
    [
        ("llama70b-b200-1p5d", KNOBS, "needs a disaggregated topology and scaling.max_workers"),
        (SCENARIO, [*KNOBS[:2], ["num_prefill_workers", 1, 6]], r"must lie in \[1, 5\]"),
        (SCENARIO, [*KNOBS[:2], ["num_prefil_workers", 1, 5]], r"neither a per-request knob .* nor a lever"),
    ],
)
def test_a_lever_the_deployment_cannot_move_is_refused(scenario, knobs, message):
    with pytest.raises(ValueError, match=message):
        DisaggRoutingEnv({"scenario": scenario, "knobs": knobs})


@pytest.mark.dynamo
@pytest.mark.skipif(not dynamo_available(), reason="ai-dynamo not installed (run `make dynamo`)")
def test_dynamos_planner_moves_workers_inside_an_episode():
    setup = EpisodeSetup(SCENARIO, ScheduleConfig(kind="constant", low=256, high=256), num_intervals=12)
    planned = run_episode(setup, "planner", seed=1_000_000)
    fixed = run_episode(setup, "default", seed=1_000_000)
    late = slice(8, None)  # after a move and its 15-s start-up
    assert np.mean([r.ttft_p99_s for r in planned.rows[late]]) < np.mean(
        [r.ttft_p99_s for r in fixed.rows[late]]
    )
