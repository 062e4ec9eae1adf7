"""The shipped policy, `checkpoints/default`, against the code it ships with.

A change to the knob ranges or the observation features silently strands the shipped policy
(`make demo` and `poa-gym eval ppo:checkpoints/default` then fail). These tests catch that, and
check that its committed export computes what its own SB3 model computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.base import PolicyContext
from agents.onnx_policy import OnnxPolicy
from agents.registry import resolve
from envs.disagg_env import DisaggRoutingEnv

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
PARITY_TOLERANCE = 1e-5
# Where the README's table evaluates it: the presets it was trained on, the held-out family, and
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
    env = DisaggRoutingEnv({"scenarios": ["llama70b-b200-3p3d-multiturn"]})
    venv = VecNormalize.load(str(SHIPPED / "vecnormalize.pkl"), DummyVecEnv([lambda: env]))
    venv.training = False
    model = PPO.load(SHIPPED / "model.zip", device="cpu")
    rng = np.random.default_rng(0)
    rms = venv.obs_rms
    observations = rng.normal(rms.mean, np.sqrt(rms.var) + 1e-3, size=(200, len(rms.mean))).astype(np.float32)
    expected, _ = model.predict(venv.normalize_obs(observations), deterministic=True)
    exported = OnnxPolicy.load(SHIPPED / "export")
    actions, _ = exported.predict(observations, deterministic=True)
    assert np.max(np.abs(np.asarray(actions) - np.clip(expected, -1, 1))) < PARITY_TOLERANCE
