"""Ray on a local 2-CPU instance: `poa-gym train --engine rllib` end to end, and
`poa-gym sweep --engine ray` against the local sweep.

Oracles: the checkpoint's own RL module and observation filter (restored from `rllib/`, not the
in-memory ones) against the exported ONNX graph and normalisation run by the loader, on
observations the environment produced (the clipped Gaussian mean to 1e-5); the export loads in
the sidecar's loader and in `poa-gym eval`'s registry for the training environment's knobs and
features; RLlib's logged env steps equal the requested budget rounded up to whole batches; the
Ray sweep's result files byte for byte against the local sweep's with the same seeds; a Tune
trial's validation against the same training run by `poa-gym train` (a twin run: training is
deterministic).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from training.ray_engine import ray_missing

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(ray_missing(), reason="Ray's RLlib not installed (pip install 'poa-gym[ray]')"),
]

CONFIG = """\
PoAGym/DisaggRouting-v0:
  n_envs: 1
  n_timesteps: 96
  policy: MlpPolicy
  n_steps: 48
  batch_size: 48
  n_epochs: 2
  gamma: 0.9
  gae_lambda: 0.9
  learning_rate: !!float 3e-4
  policy_kwargs: "{'net_arch': {'pi': [32, 32], 'vf': [32, 32]}}"
  env_kwargs:
    scenarios: [llama70b-b200-3p3d-multiturn]
    schedules: [{kind: ramp, low: 32, high: 128, jitter: 0.3}]
    num_intervals: 12
poa-gym:
  seed: 0
  start_at_defaults: false
  eval:
    scenarios: [llama70b-b200-3p3d-multiturn]
    knee_bands: {llama70b-b200-3p3d-multiturn: [16, 32]}
    schedule: {kind: ramp, low: 32, high: 128}
    num_intervals: 12
    num_validation_seeds: 1
    every_steps: 48
    num_test_seeds: 0
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from tests.test_cli_errors import run_cli

    root = tmp_path_factory.mktemp("rllib")
    (root / "config.yaml").write_text(CONFIG)
    out = root / "run"
    with pytest.MonkeyPatch.context() as patch:  # W&B offline whatever credentials the machine has
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        done = run_cli(
            "train", "--engine", "rllib", "--config", str(root / "config.yaml"), "--out", str(out), "--wandb"
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_checkpoint_exports_what_its_module_computes(run):
    import torch
    from ray.rllib.connectors.env_to_module import EnvToModulePipeline
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter
    from ray.rllib.core.rl_module import RLModule

    from agents.onnx_policy import OnnxPolicy
    from envs.disagg_env import DisaggRoutingEnv

    module = RLModule.from_checkpoint(
        run / "rllib" / "learner_group" / "learner" / "rl_module" / "default_policy"
    )
    policy = OnnxPolicy.load(run / "validation" / "candidate")  # the final module's export
    env = DisaggRoutingEnv({"scenarios": ["llama70b-b200-3p3d-multiturn"], "num_intervals": 12})
    observations = [env.reset(seed=5)[0]]
    for _ in range(11):
        observations.append(env.step(env.action_space.sample())[0])
    batch = np.stack(observations).astype(np.float32)
    # RLlib's own observation filter, restored from the checkpoint, as its env runners apply it.
    pipeline = EnvToModulePipeline.from_checkpoint(run / "rllib" / "env_runner" / "env_to_module_connector")
    (piece,) = [c for c in pipeline.connectors if isinstance(c, MeanStdFilter)]
    (running_filter,) = piece._filters.values()
    filtered = np.stack([running_filter(o, update=False) for o in batch]).astype(np.float32)
    with torch.no_grad():
        inputs = module.forward_inference({"obs": torch.from_numpy(filtered)})["action_dist_inputs"].numpy()
    expected = np.clip(inputs[:, : len(policy.knobs)], -1.0, 1.0)
    actions, _ = policy.predict(batch)
    assert np.max(np.abs(actions - expected)) < 1e-5
    policy.check_matches(env.knobs, env.obs_config.feature_names)


def test_the_export_runs_in_eval_and_the_steps_are_logged(run):
    from agents.base import PolicyContext
    from agents.registry import resolve
    from envs.disagg_env import DisaggRoutingEnv

    env = DisaggRoutingEnv({"scenarios": ["llama70b-b200-3p3d-multiturn"], "num_intervals": 12})
    policy = resolve(f"ppo:{run}").build(PolicyContext.from_env(env))
    action, _ = policy.predict(env.reset(seed=1)[0])
    assert env.action_space.contains(action.astype(np.float32))
    with (run / "logs" / "progress.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(r["env_steps"]) for r in rows] == [48, 96]
    history = json.loads((run / "validation.json").read_text())
    assert [h["num_timesteps"] for h in history] == [48, 96] and history[0]["selected"]
    assert all(np.isfinite(h["score"]) and np.isfinite(h["knee_score"]) for h in history)
    assert (run / "config.yaml").is_file() and (run / "run.json").is_file()


def test_the_wandb_offline_run_holds_sb3s_metric_names(run):
    from tests.test_training import wandb_history_keys

    run_dirs = list((run / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    keys = {"rollout/ep_rew_mean", "time/total_timesteps", "eval/mean_reward"}
    assert keys <= wandb_history_keys(run_dirs[0])


def test_rllib_flags_say_what_they_need(tmp_path):
    from tests.test_cli_errors import assert_user_error, run_cli

    assert_user_error(run_cli("train", "--ray-address", "auto", "--out", str(tmp_path)), "--engine rllib")
    assert_user_error(
        run_cli("train", "--engine", "rllib", "--resume", "--out", str(tmp_path)),
        "--resume is for --engine sb3",
    )


def test_a_ray_sweep_writes_the_local_sweeps_files(tmp_path):
    from tests.test_cli_errors import assert_user_error, run_cli
    from tests.test_sweep import TINY

    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert run_cli(*TINY, "--jobs", "1", "--out", str(local), "--no-plots").returncode == 0
    done = run_cli(*TINY, "--engine", "ray", "--out", str(distributed), "--no-plots")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("results.json", "results.csv"):
        assert (local / name).read_bytes() == (distributed / name).read_bytes(), name
    assert_user_error(run_cli(*TINY, "--ray-address", "auto", "--out", str(tmp_path / "x")), "--engine ray")


TINY_SB3 = """\
PoAGym/DisaggRouting-v0:
  n_envs: 1
  n_timesteps: 64
  policy: MlpPolicy
  n_steps: 32
  batch_size: 32
  n_epochs: 2
  env_kwargs:
    scenarios: [llama70b-b200-3p3d-multiturn]
    schedules: [{kind: ramp, low: 32, high: 128}]
    num_intervals: 12
poa-gym:
  seed: 0
  save_every_steps: 64
  eval:
    scenarios: [llama70b-b200-3p3d-multiturn]
    knee_bands: {llama70b-b200-3p3d-multiturn: [16, 32]}
    schedule: {kind: ramp, low: 32, high: 128}
    num_intervals: 12
    num_validation_seeds: 1
    every_steps: 64
    num_test_seeds: 0
"""


def test_tune_trials_match_the_same_trainings_run_alone(tmp_path):
    import json

    from tests.test_cli_errors import run_cli

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_SB3)
    done = run_cli("tune", "--config", str(config), "--grid", "seed=0,1", "--out", str(tmp_path / "tune"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert [(r["trial"], r["seed"]) for r in rows] == [("seed=0", 0), ("seed=1", 1)]
    alone = run_cli(
        "train", "--config", str(config), "--seed", "1", "--out", str(tmp_path / "alone"), "--no-progress"
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    history = json.loads((tmp_path / "alone" / "validation.json").read_text())
    assert rows[1]["best_validation"] == max(h["score"] for h in history)
    assert rows[0]["best_validation"] != rows[1]["best_validation"]


def test_grid_values_are_yaml_and_bad_keys_are_named():
    from envs.errors import UserError
    from training.config import load_train_config
    from training.tune import parse_grid, trials

    grid = parse_grid(
        ["env.scenarios=[llama70b-b200-1p2d],[agg-4w-prefix, llama70b-b200-1p2d]", "gamma=0.9,0.99"]
    )
    assert grid["env.scenarios"] == [["llama70b-b200-1p2d"], ["agg-4w-prefix", "llama70b-b200-1p2d"]]
    base = load_train_config(None)
    found = trials(base, grid)
    assert len(found) == 4 and found[3].config.ppo["gamma"] == 0.99
    assert list(found[3].config.env["scenarios"]) == ["agg-4w-prefix", "llama70b-b200-1p2d"]
    with pytest.raises(UserError, match=r"not arguments of stable_baselines3\.PPO"):
        trials(base, parse_grid(["learning_rat=0.1"]))
    with pytest.raises(UserError, match="expected KEY=V1,V2"):
        parse_grid(["seed"])


def test_the_initial_policy_sits_on_the_start_knobs(tmp_path):
    """Built, not trained: the module's mean at a real observation is the start knobs' action and
    its log-std the config's log_std_init, up to the head's small initial weights (gain 0.01)."""
    import ray
    import torch
    from ray.tune.registry import register_env

    from agents.base import PolicyContext
    from envs.disagg_env import DisaggRoutingEnv
    from training.config import load_train_config
    from training.rllib_train import ENV_NAME, _make_env, ppo_config, start_at_defaults

    text = CONFIG.replace(
        "start_at_defaults: false", "start_at_defaults: true\n  start_knobs: {overlap_score_credit: 4.0}"
    )
    text = text.replace("'vf': [32, 32]}}", "'vf': [32, 32]}, 'log_std_init': -1.0}")
    (tmp_path / "config.yaml").write_text(text)
    config = load_train_config(tmp_path / "config.yaml")
    env = DisaggRoutingEnv(dict(config.env))
    target = PolicyContext.from_env(env).action_for({"overlap_score_credit": 4.0})
    observation = torch.as_tensor(env.reset(seed=2)[0][None, :])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        register_env(ENV_NAME, _make_env)
        algo = ppo_config(config, 1).build_algo()
        start_at_defaults(algo, config)
        inputs = (
            algo.get_module()
            .forward_inference({"obs": observation})["action_dist_inputs"][0]
            .detach()
            .numpy()
        )
        algo.stop()
    finally:
        ray.shutdown()
    k = len(target)
    assert np.max(np.abs(inputs[:k] - target)) < 0.02, (inputs, target)
    assert np.max(np.abs(inputs[k:] + 1.0)) < 0.02
