"""ONNX export of a trained PPO policy, checked against stable-baselines3 itself.

One short training run (16 environment steps, so the weights and VecNormalize's statistics have
moved off their initial values) is saved in the checkpoint layout the training code writes, then
exported once; every test reads that export.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.base import PolicyContext
from agents.episodes import EpisodeSetup, run_episode
from agents.onnx_policy import OBSERVATION_SCHEMA_VERSION, OnnxPolicy
from agents.policy_spec import PolicySpecError
from agents.registry import resolve
from envs.disagg_env import ENV_ID, DisaggRoutingEnv
from envs.errors import UserError
from envs.observation import SCHEMA_VERSION
from envs.sim.knobs import action_to_override
from eval import export_cli
from training.export import (
    export_checkpoint,
    export_policy,
    load_checkpoint,
    normalization_of,
    parity_max_abs_diff,
    sample_observations,
)

SCENARIO = "llama70b-b200-3p3d-multiturn"  # Dynamo 1.6.1 knobs
V09_SCENARIO = "llama70b-b200-1p5d"  # Dynamo v0.9 knobs: overlap_score_weight, router_temperature
ENV_CONFIG = {"scenarios": [SCENARIO], "num_intervals": 8, "warmup_s": 10.0}
PARITY_TOLERANCE = 1e-5


class Trained:
    """The fixture: the checkpoint folder, its export, and SB3's own objects as the oracle."""

    def __init__(self, root: Path) -> None:
        self.checkpoint = root / "run"
        self.checkpoint.mkdir()
        self.venv = VecNormalize(
            DummyVecEnv([lambda: DisaggRoutingEnv(ENV_CONFIG)]), norm_obs=True, norm_reward=False
        )
        self.model = PPO("MlpPolicy", self.venv, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
        self.model.set_logger(configure(str(root / "logs"), []))  # else SB3 makes a folder in /tmp
        self.model.learn(16)
        self.model.save(self.checkpoint / "model.zip")
        self.venv.save(str(self.checkpoint / "vecnormalize.pkl"))
        # RL Zoo's layout, as training writes it (a plain `env:` key works too: see below).
        zoo = {ENV_ID: {"n_envs": 1, "policy": "MlpPolicy", "env_kwargs": ENV_CONFIG}, "poa-gym": {"seed": 0}}
        (self.checkpoint / "config.yaml").write_text(yaml.safe_dump(zoo))
        self.raw_observations = self._rollout(num_steps=6)
        self.exported = export_checkpoint(self.checkpoint)
        self.env = self.venv.envs[0].unwrapped

    def _rollout(self, num_steps: int) -> np.ndarray:
        """Real observations, unnormalised, with the statistics frozen."""
        self.venv.training = False
        normalised = self.venv.reset()
        raw = [self.venv.get_original_obs()]
        for _ in range(num_steps):
            action, _ = self.model.predict(normalised, deterministic=True)
            normalised, _, _, _ = self.venv.step(action)
            raw.append(self.venv.get_original_obs())
        return np.concatenate(raw).astype(np.float32)

    def observations(self, seed: int = 0) -> np.ndarray:
        """The real ones, Gaussians around the running mean, and some far out (the clip)."""
        rms = self.venv.obs_rms
        rng = np.random.default_rng(seed)
        around = rng.normal(rms.mean, np.sqrt(rms.var), size=(300, len(rms.mean)))
        far = rms.mean + rng.choice([-1.0, 1.0], size=(20, len(rms.mean))) * 50.0 * (np.sqrt(rms.var) + 1.0)
        return np.concatenate([self.raw_observations, around, far]).astype(np.float32)

    def expected(self, observations: np.ndarray) -> np.ndarray:
        actions, _ = self.model.predict(self.venv.normalize_obs(observations), deterministic=True)
        return actions


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(tmp_path_factory.mktemp("export"))


def test_training_moved_the_weights_and_the_statistics(trained: Trained):
    rms = trained.venv.obs_rms
    assert rms.count > 16
    assert not np.allclose(rms.mean, 0.0) and not np.allclose(rms.var, 1.0)
    assert not np.allclose(trained.model.policy.log_std.detach().numpy(), 0.0)


def test_onnx_actions_equal_sb3s_deterministic_actions(trained: Trained):
    observations = trained.observations()
    policy = OnnxPolicy.load(trained.checkpoint)
    actions, state = policy.predict(observations)
    expected = trained.expected(observations)
    assert state is None
    assert actions.dtype == np.float32 and actions.shape == expected.shape == (len(observations), 3)
    assert np.max(np.abs(actions - expected)) < PARITY_TOLERANCE
    assert np.any(np.abs(trained.venv.normalize_obs(observations)) == trained.venv.clip_obs)  # clip exercised


def test_actions_past_the_box_are_clipped_as_sb3_clips_them(trained: Trained, tmp_path: Path):
    model = PPO.load(trained.checkpoint / "model.zip", device="cpu")
    with torch.no_grad():
        model.policy.action_net.bias.copy_(torch.tensor([3.0, -3.0, 0.0]))  # means far outside [-1, 1]
    exported = export_policy(
        model,
        normalization_of(trained.venv),
        trained.env.knobs,
        trained.env.obs_config.feature_names,
        trained.env.config.interval_s,
        tmp_path / "export",
    )
    observations = trained.observations(seed=3)
    actions, _ = OnnxPolicy.load(exported.out_dir).predict(observations)
    expected, _ = model.predict(trained.venv.normalize_obs(observations), deterministic=True)
    assert np.all(actions[:, 0] == 1.0) and np.all(actions[:, 1] == -1.0)
    assert np.max(np.abs(actions - expected)) < PARITY_TOLERANCE


def test_a_batch_acts_as_its_single_observations(trained: Trained):
    policy = OnnxPolicy.load(trained.exported.out_dir)
    observations = trained.observations(seed=1)[:40]
    batch, _ = policy.predict(observations)
    singles = np.stack([policy.predict(obs)[0] for obs in observations])
    assert singles.shape == batch.shape
    np.testing.assert_array_equal(singles, batch)
    with pytest.raises(ValueError, match="does not match 27 features"):
        policy.predict(observations[:, :5])


def test_knob_values_map_the_action_onto_the_knob_ranges(trained: Trained):
    policy = OnnxPolicy.load(trained.checkpoint)
    observation = trained.raw_observations[3]
    action, _ = policy.predict(observation)
    values = policy.knob_values(observation)
    assert list(values) == list(policy.knob_names)
    assert values == pytest.approx(action_to_override(action, trained.env.knobs), abs=1e-12)
    assert policy.control_interval_s == 5.0


def test_policy_json_describes_the_environment_and_the_statistics(trained: Trained):
    spec = json.loads(trained.exported.json_path.read_text())
    rms = trained.venv.obs_rms
    assert spec["format"] == "poa-gym-policy" and spec["format_version"] == 1
    assert spec["observation"] == {
        "schema_version": SCHEMA_VERSION,
        "feature_names": list(trained.env.obs_config.feature_names),
        "size": trained.env.obs_config.size,
    }
    assert spec["action"]["knobs"] == [
        {"name": k.name, "low": k.low, "high": k.high} for k in trained.env.knobs
    ]
    assert spec["normalization"] == {
        "enabled": True,
        "mean": rms.mean.tolist(),  # exact: json writes floats by repr
        "var": rms.var.tolist(),
        "clip_obs": trained.venv.clip_obs,
        "epsilon": trained.venv.epsilon,
    }
    assert spec["control_interval_s"] == 5.0
    model = onnx.load(str(trained.exported.onnx_path))
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    assert opset >= 17 and spec["onnx"]["opset"] == opset == trained.exported.opset
    assert [i.name for i in model.graph.input] == [spec["onnx"]["input"]] == ["observation"]
    assert [o.name for o in model.graph.output] == [spec["onnx"]["output"]] == ["action"]
    batch_axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # a named, dynamic batch axis


def test_the_loader_imports_neither_torch_nor_the_simulator():
    code = (
        "import sys, agents.onnx_policy; "
        "assert not {'torch', 'stable_baselines3', 'envs'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    assert OBSERVATION_SCHEMA_VERSION == SCHEMA_VERSION  # the loader's copy of the constant


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format_version", 2, "field format_version must be 1"),
        ("observation.size", 5, "field observation.size must equal the 27 feature names"),
        ("normalization.mean", [0.0], "field normalization.mean must be a list of 27 numbers"),
        ("action.knobs", [{"name": "router_temperature", "low": 1.0, "high": 0.0}], r"action.knobs\[0\]"),
        ("onnx.input", "obs", "the graph's onnx.input is \\['observation'\\]"),
    ],
)
def test_a_malformed_policy_json_names_the_file_and_the_field(
    trained: Trained, tmp_path: Path, field: str, value: object, message: str
):
    folder = shutil.copytree(trained.exported.out_dir, tmp_path / "export")
    spec = json.loads((folder / "policy.json").read_text())
    *parents, key = field.split(".")
    section = spec
    for parent in parents:
        section = section[parent]
    section[key] = value
    (folder / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message) as error:
        OnnxPolicy.load(folder)
    assert "policy.json" in str(error.value) or "policy.onnx" in str(error.value)


def test_ppo_policies_resolve_from_a_checkpoint_or_its_export(trained: Trained):
    context = PolicyContext.from_env(trained.env)
    observations = trained.observations(seed=2)[:10]
    for path in (trained.checkpoint, trained.exported.out_dir):
        named = resolve(f"ppo:{path}")
        assert named.overrides == ("router.mode=kv",)
        policy = named.build(context)
        assert policy.name == f"ppo:{path}"
        actions, _ = policy.predict(observations)
        assert np.max(np.abs(actions - trained.expected(observations))) < PARITY_TOLERANCE


def test_a_ppo_policy_runs_an_evaluation_episode(trained: Trained):
    setup = EpisodeSetup(SCENARIO, num_intervals=2, interval_s=5.0, warmup_s=10.0)
    result = run_episode(setup, f"ppo:{trained.checkpoint}", seed=1_000_000)
    assert len(result.rows) == 2
    assert set(result.rows[0].knobs) == {"overlap_score_credit", "prefill_load_scale", "router_temperature"}


def test_a_ppo_policy_refuses_another_knob_space(trained: Trained):
    context = PolicyContext.from_env(DisaggRoutingEnv({"scenarios": [V09_SCENARIO]}))
    named = resolve(f"ppo:{trained.checkpoint}")
    with pytest.raises(PolicySpecError, match=r"overlap_score_credit.*overlap_score_weight.*Dynamo 1.6.1"):
        named.build(context)


def test_a_policy_refuses_other_observation_features(trained: Trained):
    policy = OnnxPolicy.load(trained.checkpoint)
    shorter = trained.env.obs_config.feature_names[:-2]  # history_len 3 instead of 4
    with pytest.raises(ValueError, match=r"reads 27 observation features, the environment gives 25"):
        policy.check_matches(trained.env.knobs, shorter)
    policy.check_matches(trained.env.knobs, trained.env.obs_config.feature_names)


def test_a_ppo_policy_without_files_fails_at_resolve(trained: Trained, tmp_path: Path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(
        PolicySpecError, match=rf"no such directory {re.escape(str(missing))}.*poa-gym export"
    ):
        resolve(f"ppo:{missing}")
    with pytest.raises(
        PolicySpecError,
        match=rf"no exported policy in {re.escape(str(tmp_path))}.*poa-gym export {re.escape(str(tmp_path))}",
    ):
        resolve(f"ppo:{tmp_path}")
    with pytest.raises(PolicySpecError, match="needs a path"):
        resolve("ppo:")


def test_export_cli_writes_the_export_and_reports_parity(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out_dir = tmp_path / "cli-export"
    assert _run_cli(["export", str(trained.checkpoint), "--out", str(out_dir), "--samples", "200"]) == 0
    printed = capsys.readouterr().out
    assert "max |SB3 - onnxruntime|" in printed and ": ok" in printed
    assert {p.name for p in out_dir.iterdir()} == {"policy.onnx", "policy.json"}
    max_diff, count = parity_max_abs_diff(load_checkpoint(trained.checkpoint), out_dir, num_samples=200)
    assert count == 200 and max_diff < PARITY_TOLERANCE


def test_export_cli_names_a_missing_checkpoint(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=rf"{re.escape(str(missing))}: no such checkpoint directory"):
        _run_cli(["export", str(missing)])


def test_export_reads_a_plain_env_key_and_names_what_a_user_can_fix(trained: Trained, tmp_path: Path):
    run = shutil.copytree(trained.checkpoint, tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    (run / "config.yaml").write_text(yaml.safe_dump({"env": ENV_CONFIG}))
    exported = export_checkpoint(run)
    assert json.loads(exported.json_path.read_text()) == json.loads(trained.exported.json_path.read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({"training": {}}))
    with pytest.raises(
        UserError, match=r"config.yaml: needs the environment's config as a mapping, under `env`"
    ):
        export_checkpoint(run)
    (run / "config.yaml").write_text(yaml.safe_dump({ENV_ID: {"env_kwargs": {"scenarios": ["no-such"]}}}))
    with pytest.raises(
        UserError, match=r"field `PoAGym/DisaggRouting-v0.env_kwargs` is not a valid environment"
    ):
        export_checkpoint(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"env": {"scenarios": [V09_SCENARIO]}}))
    with pytest.raises(UserError, match=r"model.zip vs config.yaml's env: the model observes shape"):
        export_checkpoint(run)
    (run / "model.zip").unlink()
    with pytest.raises(UserError, match=r"model.zip: missing"):
        export_checkpoint(run)


def test_sampled_observations_reach_past_the_clip(trained: Trained):
    checkpoint = load_checkpoint(trained.checkpoint)
    samples = sample_observations(checkpoint.normalization, 27, 64)
    assert samples.shape == (64, 27) and samples.dtype == np.float32
    assert np.any(np.abs(trained.venv.normalize_obs(samples)) == trained.venv.clip_obs)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="poa-gym")
    export_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)
