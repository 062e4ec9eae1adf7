"""The shipped policy, `checkpoints/default`, against the code it ships with.

A change to the knob ranges or the observation features silently strands the shipped policy
(`make demo` and `poa-gym eval ppo:checkpoints/default` then fail). These tests catch that, and
check that its committed export computes what its own SB3 model computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.base import PolicyContext
from agents.registry import resolve
from envs.disagg_env import DisaggRoutingEnv
from training.export import load_checkpoint, parity_max_abs_diff

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
PARITY_TOLERANCE = 1e-5
# Where eval/RESULTS.md's table evaluates it: the presets it was trained on, the held-out family, and
# the paper presets under Dynamo 1.6.1 routing.
SCENARIOS = (
    ("llama70b-b200-3p3d-multiturn", ()),
    ("llama8b-h200-agg8-multiturn", ()),
    ("llama70b-b200-1p5d", ("router.router_semantics=dynamo-1.6",)),
)


@pytest.mark.parametrize(("scenario", "overrides"), SCENARIOS)
def test_the_shipped_policy_builds_on_the_scenarios_it_is_evaluated_on(scenario, overrides):
    env = DisaggRoutingEnv({"scenarios": [scenario], "overrides": list(overrides)})
    policy = resolve("ppo:checkpoints/default").build(PolicyContext.from_env(env))
    observation, _ = env.reset(seed=1_000_000)
    action, _ = policy.predict(observation, deterministic=True)
    assert env.action_space.contains(np.asarray(action, dtype=np.float32).reshape(-1))


def test_the_committed_export_computes_what_the_shipped_model_computes():
    max_abs_diff, num_compared = parity_max_abs_diff(load_checkpoint(SHIPPED), SHIPPED / "export")
    assert num_compared >= 200
    assert max_abs_diff < PARITY_TOLERANCE


# The lever policies, each on the budget preset it was trained on, with its action space.
LEVER_POLICIES = (
    (
        "levers",
        "llama70b-b200-1p5d-budget6",
        [["overlap_score_weight", 0, 2], ["router_temperature", 0, 1], ["num_prefill_workers", 1, 5]],
    ),
    (
        "levers-multiturn",
        "llama70b-b200-3p3d-multiturn-budget6",
        [
            ["overlap_score_credit", 0, 8],
            ["prefill_load_scale", 0, 8],
            ["router_temperature", 0, 1],
            ["num_prefill_workers", 1, 5],
        ],
    ),
    (
        "levers-2p4d",
        "disagg-2p4d-multiturn-budget6",
        [
            ["overlap_score_credit", 0, 8],
            ["prefill_load_scale", 0, 8],
            ["router_temperature", 0, 1],
            ["num_prefill_workers", 1, 4],
        ],
    ),
)


@pytest.mark.parametrize(("name", "scenario", "knobs"), LEVER_POLICIES)
def test_a_shipped_lever_policy_builds_and_sets_a_split_within_the_budget(name, scenario, knobs):
    env = DisaggRoutingEnv({"scenarios": [scenario], "knobs": knobs})
    policy = resolve(f"ppo:checkpoints/{name}").build(PolicyContext.from_env(env))
    observation, _ = env.reset(seed=1_000_000)
    action, _ = policy.predict(observation, deterministic=True)
    _, _, _, _, info = env.step(np.asarray(action, dtype=np.float32).reshape(-1))
    assert 1 <= info["knobs"]["num_prefill_workers"] <= 5


@pytest.mark.parametrize("name", [name for name, _, _ in LEVER_POLICIES])
def test_a_committed_lever_export_computes_what_its_model_computes(name):
    checkpoint = SHIPPED.parent / name
    max_abs_diff, num_compared = parity_max_abs_diff(load_checkpoint(checkpoint), checkpoint / "export")
    assert num_compared >= 200
    assert max_abs_diff < PARITY_TOLERANCE
