"""`poa-gym train`: config files (ours and RL Zoo's reading of them), a twin run, resume, W&B.

Oracles: a twin run with the same seed gives bit-identical parameters; RL Zoo itself trains
from our file; the W&B run file itself (read record by record) holds the logged keys.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from envs.errors import UserError
from eval.cli import main
from training.config import DEFAULT_CONFIG, load_train_config

pytestmark = pytest.mark.slow

TINY = {
    "PoAGym/DisaggRouting-v0": {
        "n_envs": 2,
        "n_timesteps": 32,
        "policy": "MlpPolicy",
        "normalize": "{'norm_obs': True, 'norm_reward': False}",
        "n_steps": 16,
        "batch_size": 16,
        "n_epochs": 2,
        "gamma": 0.9,
        "policy_kwargs": "{'net_arch': {'pi': [16], 'vf': [16]}, 'log_std_init': -1.0}",
        "env_kwargs": {
            "scenarios": ["llama70b-b200-3p3d-multiturn"],
            "schedules": [{"kind": "ramp", "low": 16, "high": 64}],
            "num_intervals": 8,
        },
    },
    "poa-gym": {
        "seed": 3,
        "save_every_steps": 32,
        "eval": {
            "scenarios": ["llama70b-b200-3p3d-multiturn"],
            "knee_bands": {"llama70b-b200-3p3d-multiturn": [16, 32]},
            "schedule": {"kind": "ramp", "low": 16, "high": 64},
            "num_intervals": 6,
            "num_validation_seeds": 1,
            "every_steps": 32,
            "num_test_seeds": 1,
            "test_policies": ["knee", "default"],
        },
    },
}


def write_config(directory: Path, **changes: object) -> Path:
    data = json.loads(json.dumps(TINY))
    data["PoAGym/DisaggRouting-v0"].update(changes)
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wandb_history_keys(run_dir: Path) -> set[str]:
    """The keys of every history record in a W&B run file (LevelDB-log framed protobufs:
    a 7-byte header, then 32 KiB blocks of records with a 7-byte crc/length/type prefix)."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    keys: set[str] = set()
    position, pending, block = 7, b"", 32768
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys


def parameters(checkpoint: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(checkpoint / "model.zip") as archive, archive.open("policy.pth") as handle:
        return torch.load(handle, map_location="cpu", weights_only=True)


def test_packaged_config_loads_and_names_its_envs():
    config = load_train_config()
    assert config.n_envs >= 1 and config.ppo["n_steps"] >= 1
    assert "llama70b-b200-3p3d-multiturn" in config.env_config().scenarios
    assert DEFAULT_CONFIG.is_file()


@pytest.mark.parametrize(
    ("section", "change", "words"),
    [
        ("PoAGym/DisaggRouting-v0", {"n_stepz": 8}, ["n_stepz", "PPO"]),
        ("PoAGym/DisaggRouting-v0", {"normalize": "dict(norm_obs=True)"}, ["normalize", "literal"]),
        ("PoAGym/DisaggRouting-v0", {"env_kwargs": {"scenarioz": ["x"]}}, ["scenarioz", "EnvConfig"]),
        ("poa-gym", {"eval": {"every_steps": 0}}, ["eval.every_steps", ">= 1"]),
        ("poa-gym", {"seed": 950_000}, ["seed", "900000"]),
        ("poa-gym", {"start_knobs": {"credit": 2.0}}, ["start_knobs.credit", "not a knob"]),
        ("poa-gym", {"start_knobs": {"router_temperature": -1}}, ["start_knobs.router_temperature", ">= 0"]),
        ("poa-gym", {"start_knobs": [2.0]}, ["start_knobs", "mapping"]),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, section, change, words):
    data = json.loads(json.dumps(TINY))
    data[section].update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as error:
        load_train_config(path)
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_initial_policy_sits_on_the_start_knobs(tmp_path):
    """The untrained model's deterministic knobs are the named start knobs (corners exactly, an
    inner value to within the action head's initial weights), and the scenario's for the rest."""
    from stable_baselines3 import PPO

    from envs.disagg_env import DisaggRoutingEnv
    from envs.sim.knobs import action_to_override
    from training.train import _start_at_defaults

    data = json.loads(json.dumps(TINY))
    data["poa-gym"]["start_knobs"] = {"overlap_score_credit": 8.0, "router_temperature": 0.25}
    path = tmp_path / "start.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_train_config(path)
    env = DisaggRoutingEnv(dict(config.env))
    model = PPO("MlpPolicy", env, seed=0, device="cpu", policy_kwargs={"net_arch": [16]})
    _start_at_defaults(model, config)
    obs, _ = env.reset(seed=0)
    knobs = action_to_override(model.predict(obs, deterministic=True)[0], env.knobs)
    assert knobs["overlap_score_credit"] == 8.0
    assert knobs["router_temperature"] == pytest.approx(0.25, abs=0.03)
    # The action head's initial weights move an inner value by ~0.01 action units (x4 on [0, 8]).
    assert knobs["prefill_load_scale"] == pytest.approx(1.0, abs=0.25)
    assert load_train_config(path).to_yaml_dict()["poa-gym"]["start_knobs"]["router_temperature"] == 0.25


def test_rl_zoo_trains_from_our_file(tmp_path):
    path = write_config(tmp_path)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "PoAGym/DisaggRouting-v0"),
            *("--gym-packages", "envs", "--conf-file", str(path), "-n", "32", "--eval-freq", "-1"),
            *("--log-folder", str(tmp_path / "zoo"), "--seed", "1", "--vec-env", "dummy"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "zoo").rglob("*.zip")), "RL Zoo saved no model"


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory):
    """The same config and seed twice: once with W&B (offline), once in a fresh process without."""
    directory = tmp_path_factory.mktemp("train")
    path = write_config(directory)
    first = directory / "a"
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    code = (
        "import sys\nfrom eval.cli import main\nrc = main(sys.argv[1:])\n"
        "assert ('wandb' in sys.modules) == ('--wandb' in sys.argv), 'wandb imported without --wandb'\n"
        "sys.exit(rc)\n"
    )
    for out, extra in ((first, ["--wandb"]), (directory / "b", ["--no-test"])):
        args = ["train", "--config", str(path), "--out", str(out), "--jobs", "2", "--no-progress", *extra]
        done = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=environment, timeout=900
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return directory


def test_twin_runs_are_bit_identical(twin_runs):
    first, second = parameters(twin_runs / "a"), parameters(twin_runs / "b")
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
    stats = [pickle.loads((twin_runs / run / "vecnormalize.pkl").read_bytes()).obs_rms for run in "ab"]
    assert stats[0].count == stats[1].count
    assert (stats[0].mean == stats[1].mean).all() and (stats[0].var == stats[1].var).all()


def test_checkpoint_layout_and_final_comparison(twin_runs):
    run = twin_runs / "a"
    for name in ("model.zip", "vecnormalize.pkl", "config.yaml", "run.json", "validation.json", "eval.json"):
        assert (run / name).is_file(), name
    assert (run / "export" / "policy.onnx").is_file() and (run / "last" / "model.zip").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["command"][:2] == ["poa-gym", "train"] and "--wandb" in info["command"]
    assert load_train_config(run / "config.yaml").seed == 3  # the resolved config reloads
    table = json.loads((run / "eval.json").read_text())["scenarios"]["llama70b-b200-3p3d-multiturn"]
    assert {"ppo:" + str(run) + "/all", "knee/all", "default/all"} <= set(table["summary"])
    assert table["ratios"]["throughput_all_vs_default"] > 0
    history = json.loads((run / "validation.json").read_text())
    assert [entry["num_timesteps"] for entry in history] == [32]
    assert history[0]["selected"] and history[0]["knee_score"] < 0


def test_wandb_offline_run_holds_the_namespaced_keys(twin_runs):
    run_dirs = list((twin_runs / "a" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    keys = wandb_history_keys(run_dirs[0])
    for prefix in ("train/", "reward_terms/", "knobs/", "eval/", "rollout/"):
        assert any(key.startswith(prefix) for key in keys), (prefix, sorted(keys))
    assert "knobs/router_temperature" in keys and "reward_terms/poa" in keys
    assert "eval/llama70b-b200-3p3d-multiturn/mean_reward" in keys
    assert "eval/knee/llama70b-b200-3p3d-multiturn/mean_reward" in keys


def test_resume_continues_from_the_last_snapshot(twin_runs, tmp_path):
    run = tmp_path / "b"
    shutil.copytree(twin_runs / "b", run)
    rc = main(["train", "--out", str(run), "--resume", "--timesteps", "64", "--no-test", "--no-progress"])
    assert rc == 0
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["num_timesteps"] == 64
    history = json.loads((run / "validation.json").read_text())
    assert [entry["num_timesteps"] for entry in history] == [32, 64]


def test_resume_on_more_validation_seeds_rescores_the_selected_model(twin_runs, tmp_path):
    """Scores on 1 and 2 seeds are not compared: the selected model is scored on 2 first, and that
    score equals an independent evaluation of it (scripts/revalidate.py's engine) on those seeds."""
    from training.validation import VALIDATION_SEED_BASE, mean_reward, run_evaluations, scores

    run = tmp_path / "b"
    shutil.copytree(twin_runs / "b", run)
    config = load_train_config(run / "config.yaml").with_validation_seeds(2)
    name = f"ppo:{run}"
    expected = mean_reward(scores(run_evaluations(config, [name], 2, VALIDATION_SEED_BASE, 2)), name)
    args = ["train", "--out", str(run), "--resume", "--timesteps", "64", "--validation-seeds", "2"]
    assert main([*args, "--no-test", "--no-progress", "--jobs", "2"]) == 0
    history = json.loads((run / "validation.json").read_text())
    assert [(h["num_timesteps"], h["num_seeds"], h.get("rescored", False)) for h in history] == [
        (32, 1, False),
        (32, 2, True),
        (64, 2, False),
    ]
    assert history[1]["score"] == expected and history[1]["selected"]
    assert history[2]["selected"] == (history[2]["score"] > expected)
    assert load_train_config(run / "config.yaml").eval.num_validation_seeds == 2


def test_resume_with_a_new_learning_rate_trains_at_it(twin_runs, tmp_path):
    """The resumed model is what the run's config says: SB3's own load of the result shows the
    new rate, and the optimizer's step size is it (SB3 sets it from the schedule each update)."""
    from stable_baselines3 import PPO

    run = tmp_path / "b"
    shutil.copytree(twin_runs / "b", run)
    args = ["train", "--out", str(run), "--resume", "--timesteps", "64", "--learning-rate", "1e-5"]
    assert main([*args, "--no-test", "--no-progress", "--jobs", "2"]) == 0
    model = PPO.load(run / "last" / "model.zip", device="cpu")
    assert model.learning_rate == 1e-5 and model.lr_schedule(0.5) == 1e-5
    assert [group["lr"] for group in model.policy.optimizer.param_groups] == [1e-5]
    assert load_train_config(run / "config.yaml").ppo["learning_rate"] == 1e-5
    before = PPO.load(twin_runs / "b" / "last" / "model.zip", device="cpu")
    assert before.learning_rate != 1e-5


def test_refuses_to_overwrite_or_resume_nothing(tmp_path, twin_runs):
    path = write_config(tmp_path)
    assert main(["train", "--config", str(path), "--out", str(twin_runs / "a"), "--no-progress"]) == 2
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume", "--no-progress"]) == 2


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--timesteps", "0", "--timesteps must be >= 1"),
        ("--n-envs", "0", "--n-envs must be >= 1"),
        ("--validation-seeds", "0", "--validation-seeds must be >= 1"),
        ("--learning-rate", "0", "--learning-rate must be in (0, 1)"),
    ],
)
def test_bad_counts_and_rates_are_refused_with_the_flag_named(tmp_path, capsys, flag, value, rule):
    path = write_config(tmp_path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "x"), flag, value]) == 2
    assert rule in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_validation_scores_by_the_reward_the_run_trains_on(tmp_path):
    """A run trained with the ITL hinge is selected with it: its validation episodes' env has it."""
    import dataclasses

    from envs.reward import RewardConfig
    from training.validation import episode_setup

    config = load_train_config(write_config(tmp_path))
    config = dataclasses.replace(config, env={**config.env, "reward": {"itl_weight": 2.0, "itl_slo_s": 0.03}})
    setup = episode_setup(config, config.eval.scenarios[0])
    assert setup.env().config.reward == RewardConfig(itl_weight=2.0, itl_slo_s=0.03) != RewardConfig()
