"""Golden digests: every preset's records, PoA-hat, environment episode and policy episode, bit for bit.

The oracle is a committed file of SHA-256 digests (`tests/golden/digests.json`) computed from the
`repr` of what each run produced (Python's float repr round-trips exactly, so equal digests mean
bit-identical values). A refactor that claims "behaviour unchanged" must leave every digest alone;
a change that means to alter behaviour regenerates the file on purpose and says why:

    .venv/bin/python -m tests.test_golden --write
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.episodes import EpisodeSetup, run_episode
from agents.registry import resolve
from envs.disagg_env import DisaggRoutingEnv
from envs.poa import estimate_poa, poa_params_for
from envs.scenarios import load_inputs, load_scenario, preset_names, run_scenario
from envs.schedules import ScheduleConfig

GOLDEN = Path(__file__).parent / "golden" / "digests.json"
SIM_DURATION_S = 20.0
NUM_ENV_STEPS = 3
POLICY_SCENARIO = "llama70b-b200-3p3d-multiturn"
POLICIES = ("default", "knee", "llm-d", "ppo:checkpoints/default")


def digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


def sim_digests(name: str) -> dict[str, str]:
    scenario, path = load_scenario(name, [f"duration_s={SIM_DURATION_S}"])
    if scenario.workload.num_requests is not None:
        scenario = dataclasses.replace(
            scenario, workload=dataclasses.replace(scenario.workload, num_requests=None)
        )
    result = run_scenario(scenario, path)
    poa = estimate_poa(result.records, poa_params_for(scenario, load_inputs(scenario, path).profile))
    return {
        "records": digest(result.records),
        "pass_gaps": digest([stats.pass_gaps_s for stats in result.engine_stats]),
        "sim_time": digest(result.sim_time_s),
        "poa": digest(dataclasses.astuple(poa)),
    }


def env_digest(name: str) -> str:
    env = DisaggRoutingEnv(
        {"scenario": name, "num_intervals": NUM_ENV_STEPS, "schedule": ScheduleConfig(kind="ramp")}
    )
    observation, info = env.reset(seed=11)
    actions = np.random.default_rng(5).uniform(-1, 1, (NUM_ENV_STEPS, env.action_space.shape[0]))
    trail: list[Any] = [observation.tolist(), sorted(info.items())]
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action.astype(np.float32))
        trail += [observation.tolist(), reward, terminated, truncated, sorted(info.items())]
    trail.append(env.records)
    return digest(trail)


def policy_digest(policy: str) -> str:
    setup = EpisodeSetup(POLICY_SCENARIO, ScheduleConfig(kind="ramp"), num_intervals=4)
    result = run_episode(setup, policy, seed=1_000_000)
    return digest((result.rows, result.phases))


def env_presets() -> list[str]:
    return [name for name in preset_names() if load_scenario(name)[0].workload.arrival != "trace"]


def compute() -> dict[str, dict[str, Any]]:
    computed: dict[str, dict[str, Any]] = {"sim": {}, "env": {}, "policy": {}}
    jobs: list[tuple[str, str, Callable[[str], Any]]] = [
        *(("sim", name, sim_digests) for name in preset_names()),
        *(("env", name, env_digest) for name in env_presets()),
        *(("policy", name, policy_digest) for name in POLICIES),
    ]
    for kind, name, job in jobs:
        computed[kind][name] = job(name)
    return computed


def golden() -> dict[str, dict[str, Any]]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", preset_names())
def test_preset_records_and_poa_are_unchanged(name):
    assert sim_digests(name) == golden()["sim"][name]


@pytest.mark.slow
@pytest.mark.parametrize("name", env_presets())
def test_env_episode_is_unchanged(name):
    assert env_digest(name) == golden()["env"][name]


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_policy_episode_is_unchanged(policy):
    resolve(policy)  # a name the registry refuses fails here, not as a digest mismatch
    assert policy_digest(policy) == golden()["policy"][policy]


def test_digests_cover_every_preset():
    assert sorted(golden()["sim"]) == preset_names()
    assert sorted(golden()["env"]) == env_presets()


def test_digest_sees_the_last_bit():
    assert digest(0.1 + 0.2) != digest(0.3)  # 0.30000000000000004 vs 0.3: one ulp apart


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(compute(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
