"""`PoAGym/DisaggRouting-v0`: the checkers, determinism, schedules, and the knob mapping."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the environment)
from envs.disagg_env import DisaggRoutingEnv, make_env
from envs.env_config import EnvConfig
from envs.schedules import ScheduleConfig, concurrency_levels
from envs.sim.knobs import KnobRange, action_to_override, override_to_action

# A small, fast configuration: 8B on H200 keeps each interval to a few hundred requests.
SMALL = {
    "scenario": "llama70b-b200-1p2d",
    "num_intervals": 4,
    "interval_s": 2.0,
    "warmup_s": 2.0,
    "schedule": {"kind": "ramp", "low": 8, "high": 48},
}


@pytest.mark.parametrize("scenario", ["llama70b-b200-1p2d", "llama70b-b200-3p3d-multiturn"])
def test_gymnasium_and_sb3_checkers_pass(scenario: str) -> None:
    env = gym.make("PoAGym/DisaggRouting-v0", **{**SMALL, "scenario": scenario})
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(DisaggRoutingEnv({**SMALL, "scenario": scenario}), warn=True)


def _rollout(env: DisaggRoutingEnv, seed: int) -> tuple[list[np.ndarray], list[float]]:
    observation, _ = env.reset(seed=seed)
    observations, rewards = [observation], []
    actions = np.linspace(-1, 1, env.config.num_intervals * env.action_space.shape[0]).reshape(
        env.config.num_intervals, -1
    )
    for action in actions:
        observation, reward, terminated, truncated, _ = env.step(action)
        observations.append(observation)
        rewards.append(reward)
        assert not terminated
    assert truncated
    return observations, rewards


def test_same_seed_same_episode_bit_for_bit() -> None:
    first = _rollout(make_env(SMALL), seed=11)
    second = _rollout(make_env(SMALL), seed=11)
    other = _rollout(make_env(SMALL), seed=12)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], second[0], strict=True))
    assert first[1] == second[1]
    assert not all(np.array_equal(a, b) for a, b in zip(first[0], other[0], strict=True))


def test_plain_dict_and_make_build_the_same_env() -> None:
    from_make = gym.make("PoAGym/DisaggRouting-v0", **SMALL).unwrapped
    from_dict = make_env(SMALL)
    assert from_make.config == from_dict.config
    assert from_dict.observation_space.shape == (from_dict.obs_config.size,)
    # v0.9 presets take v0.9's two per-request knobs.
    assert [k.name for k in from_dict.knobs] == ["overlap_score_weight", "router_temperature"]


def test_make_with_no_arguments_builds_the_documented_defaults() -> None:
    env = gym.make("PoAGym/DisaggRouting-v0")
    assert env.unwrapped.config == EnvConfig()  # the scenario, schedule and interval the docstring gives
    observation, info = env.reset(seed=0)
    assert info["scenario"] == "llama70b-b200-1p5d" and observation.shape == env.observation_space.shape
    assert EnvConfig.from_dict({}) == EnvConfig() == make_env().config


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="unknown field"):
        EnvConfig.from_dict({"scenario": "llama70b-b200-1p2d", "intervals": 3})
    with pytest.raises(ValueError, match="takes each of"):
        make_env({**SMALL, "knobs": [["overlap_score_credit", 0, 2]]})


@pytest.mark.parametrize(
    ("section", "value"),
    [("reward", {"itl_wieght": 1.0}), ("schedule", {"kind": "ramp", "hi": 9}), ("live", {"urll": "x"})],
)
def test_a_nested_section_names_its_unknown_key_and_the_known_ones(section: str, value: dict) -> None:
    data = {"scenario": "llama70b-b200-1p2d", section: value}
    if section == "live":
        data["backend"] = "dynamo"
    (typo,) = set(value) - {"kind"}
    with pytest.raises(ValueError, match=rf"^{section}: unknown field\(s\) \['{typo}'\] \(known: \["):
        EnvConfig.from_dict(data)


def test_knob_mapping_round_trips() -> None:
    knobs = (KnobRange("overlap_score_weight", 0.0, 2.0), KnobRange("router_temperature", 0.0, 1.0))
    assert action_to_override(np.array([-1.0, 1.0]), knobs) == {
        "overlap_score_weight": 0.0,
        "router_temperature": 1.0,
    }
    assert action_to_override(np.array([5.0, 0.0]), knobs)["overlap_score_weight"] == 2.0  # clipped
    values = {"overlap_score_weight": 0.5, "router_temperature": 0.8}
    assert action_to_override(override_to_action(values, knobs), knobs) == pytest.approx(values)


def test_schedules_by_hand() -> None:
    assert concurrency_levels(ScheduleConfig("ramp", low=16, high=256), 5) == [16, 32, 64, 128, 256]
    assert concurrency_levels(ScheduleConfig("step", low=8, high=64, at_fraction=0.5), 4) == [8, 8, 64, 64]
    burst = ScheduleConfig("burst", low=10, high=100, period_intervals=3, burst_intervals=1)
    assert concurrency_levels(burst, 6) == [100, 10, 10, 100, 10, 10]
    diurnal = concurrency_levels(ScheduleConfig("diurnal", low=16, high=256, period_intervals=4), 4)
    assert diurnal == [16, 64, 256, 64]  # trough, geometric mean, peak, mean
    with pytest.raises(ValueError, match="low <= high"):
        ScheduleConfig("ramp", low=64, high=8)
