"""Export a trained PPO policy to ONNX for the router sidecar: `policy.onnx` plus `policy.json`.

The graph maps the *normalised* observation to SB3's deterministic action (the Gaussian's mean,
clipped to [-1, 1]), exactly what `model.predict(obs, deterministic=True)` returns for the env's
Box action space. VecNormalize's statistics, the feature names and the knob ranges go into
`policy.json`, so the loader (`agents.onnx_policy`) normalises in numpy and needs no torch.

A checkpoint `checkpoints/NAME/` holds `model.zip` (SB3 PPO), `config.yaml` (the environment's
`envs.disagg_env.EnvConfig` fields under `env`, or under RL Zoo's `PoAGym/DisaggRouting-v0:
env_kwargs` as training writes them) and optionally `vecnormalize.pkl`; the export goes to
`checkpoints/NAME/export/` unless told otherwise.
"""

from __future__ import annotations

import functools
import json
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy

from agents.onnx_policy import (
    EXPORT_DIR,
    POLICY_FORMAT,
    POLICY_FORMAT_VERSION,
    POLICY_JSON,
    POLICY_ONNX,
    KnobLike,
    Normalization,
    OnnxPolicy,
)
from envs.disagg_env import ENV_ID
from envs.errors import UserError
from envs.observation import SCHEMA_VERSION
from training.onnx_graph import INPUT_NAME, OUTPUT_NAME, default_opset, write_actor_onnx

MODEL_ZIP = "model.zip"
VECNORMALIZE_PKL = "vecnormalize.pkl"
CONFIG_YAML = "config.yaml"
ACTION_MAPPING = "knob = low + (a + 1) / 2 * (high - low), a clipped to [-1, 1]"


@dataclass(frozen=True, slots=True)
class ExportedPolicy:
    """The files an export wrote, and the opset its graph declares."""

    out_dir: Path
    onnx_path: Path
    json_path: Path
    opset: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A training run's folder, loaded: the model, VecNormalize (unpickled, without its VecEnv)
    and what the environment of `config.yaml` says about knobs, features and the interval."""

    path: Path
    model: PPO
    vecnormalize: Any | None
    knobs: tuple[KnobLike, ...]
    feature_names: tuple[str, ...]
    interval_s: float

    @property
    def normalization(self) -> Normalization | None:
        return normalization_of(self.vecnormalize)


class _DeterministicActor(torch.nn.Module):
    """SB3's deterministic action for a Box space: actor features -> mean action -> clip."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        # BasePolicy's method takes the actor's extractor whether or not it is shared with the critic,
        # as ActorCriticPolicy.get_distribution does.
        features = BasePolicy.extract_features(self.policy, observation, self.policy.pi_features_extractor)
        mean_action = self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))
        return torch.clamp(mean_action, -1.0, 1.0)


def normalization_of(vecnormalize: Any | None) -> Normalization | None:
    """VecNormalize's observation statistics, or None without one (or with norm_obs off)."""
    if vecnormalize is None or not vecnormalize.norm_obs:
        return None
    rms = vecnormalize.obs_rms
    return Normalization(
        mean=np.asarray(rms.mean, dtype=np.float64),
        var=np.asarray(rms.var, dtype=np.float64),
        clip_obs=float(vecnormalize.clip_obs),
        epsilon=float(vecnormalize.epsilon),
    )


def export_policy(
    model: PPO,
    normalization: Normalization | None,
    knobs: Sequence[KnobLike],
    feature_names: Sequence[str],
    interval_s: float,
    out_dir: str | Path,
) -> ExportedPolicy:
    """Write `policy.onnx` and `policy.json` into `out_dir` (created if needed).

    Raises:
        ValueError: the model's spaces do not match the features and knobs, or its actions are
            squashed (the graph holds the clipped Gaussian mean only).
    """
    _check_model(model, len(feature_names), len(knobs))
    if normalization is not None and normalization.mean.shape != (len(feature_names),):
        raise ValueError(
            f"normalisation statistics of shape {normalization.mean.shape}, not {len(feature_names)}"
        )
    write_onnx = functools.partial(_write_onnx, model.policy, len(feature_names))
    return write_export(write_onnx, normalization, knobs, feature_names, interval_s, out_dir)


def write_export(
    write_onnx: Callable[[Path], None],
    normalization: Normalization | None,
    knobs: Sequence[KnobLike],
    feature_names: Sequence[str],
    interval_s: float,
    out_dir: str | Path,
) -> ExportedPolicy:
    """`policy.onnx` (written by `write_onnx(path)`) and its `policy.json` in `out_dir`; SB3's and
    RLlib's exports both end here."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / POLICY_ONNX
    write_onnx(onnx_path)
    opset = default_opset(onnx_path)
    spec = _policy_spec(normalization, knobs, feature_names, interval_s, opset)
    json_path = out / POLICY_JSON
    json_path.write_text(json.dumps(spec, indent=2) + "\n")
    return ExportedPolicy(out, onnx_path, json_path, opset)


def _check_model(model: PPO, num_features: int, num_knobs: int) -> None:
    obs_space, action_space = model.observation_space, model.action_space
    if obs_space.shape != (num_features,):
        raise ValueError(
            f"the model observes shape {obs_space.shape}, the environment gives {num_features} features"
        )
    if action_space.shape != (num_knobs,):
        raise ValueError(
            f"the model acts in shape {action_space.shape}, the environment has {num_knobs} knobs"
        )
    if not (np.all(action_space.low == -1.0) and np.all(action_space.high == 1.0)):
        raise ValueError("the model's action space is not [-1, 1]^k, the environment's")
    if model.policy.squash_output:
        raise ValueError(
            "the model squashes its actions (gSDE with squash_output); only Gaussian means export"
        )


def _write_onnx(policy: ActorCriticPolicy, num_features: int, path: Path) -> None:
    # torch 2.13's default exporter (torch.export-based, dynamo=True). Both it and the TorchScript
    # one (dynamo=False) export SB3's MLP reliably here, as Gemm/Tanh/Gemm/Tanh/Gemm/Clip matching
    # SB3 to ~1e-8, but the TorchScript exporter warns that it will be removed; the default is the
    # one that keeps working. It takes ~1 s instead of ~0.1 s, which an export can afford.
    # Batch 2 in the example keeps torch.export from specialising the batch axis to the constant 1.
    was_training = policy.training
    policy.set_training_mode(False)
    try:
        write_actor_onnx(_DeterministicActor(policy).eval(), num_features, path)
    finally:
        policy.set_training_mode(was_training)  # the caller may go on training this model


def _policy_spec(
    normalization: Normalization | None,
    knobs: Sequence[KnobLike],
    feature_names: Sequence[str],
    interval_s: float,
    opset: int,
) -> dict[str, Any]:
    """policy.json's content; floats stay exact (json writes Python floats by repr)."""
    if normalization is None:
        stats: dict[str, Any] = {
            "enabled": False,
            "mean": None,
            "var": None,
            "clip_obs": None,
            "epsilon": None,
        }
    else:
        stats = {
            "enabled": True,
            "mean": [float(v) for v in normalization.mean],
            "var": [float(v) for v in normalization.var],
            "clip_obs": float(normalization.clip_obs),
            "epsilon": float(normalization.epsilon),
        }
    return {
        "format": POLICY_FORMAT,
        "format_version": POLICY_FORMAT_VERSION,
        "observation": {
            "schema_version": SCHEMA_VERSION,
            "feature_names": list(feature_names),
            "size": len(feature_names),
        },
        "normalization": stats,
        "action": {
            "knobs": [{"name": k.name, "low": float(k.low), "high": float(k.high)} for k in knobs],
            "mapping": ACTION_MAPPING,
        },
        "control_interval_s": float(interval_s),
        "onnx": {"file": POLICY_ONNX, "opset": opset, "input": INPUT_NAME, "output": OUTPUT_NAME},
    }


# -- checkpoints --------------------------------------------------------------------------------


def load_checkpoint(checkpoint_dir: str | Path) -> Checkpoint:
    """A checkpoint folder's model, VecNormalize and environment facts.

    Raises:
        UserError: the folder, model.zip or config.yaml is missing or unreadable, config.yaml's
            `env` is not a valid environment config, or vecnormalize.pkl cannot be read.
    """
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint directory (a training run's folder with {MODEL_ZIP})")
    model_path = path / MODEL_ZIP
    if not model_path.is_file():
        raise UserError(f"{model_path}: missing; a checkpoint needs the SB3 model that training saved")
    knobs, feature_names, interval_s = _env_facts(path / CONFIG_YAML)
    try:
        model = PPO.load(model_path, device="cpu")
    except Exception as error:  # zipfile, pickle and torch each raise their own types
        raise UserError(f"{model_path}: cannot be loaded as an SB3 PPO model ({error})") from None
    return Checkpoint(path, model, _vecnormalize(path / VECNORMALIZE_PKL), knobs, feature_names, interval_s)


def export_checkpoint(
    checkpoint: str | Path | Checkpoint, out_dir: str | Path | None = None
) -> ExportedPolicy:
    """Export a checkpoint (a folder or a loaded one) to `out_dir` (default: its `export/`).

    Raises:
        UserError: as `load_checkpoint`, or the model does not fit config.yaml's environment.
    """
    loaded = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    out = Path(out_dir) if out_dir is not None else loaded.path / EXPORT_DIR
    try:
        return export_policy(
            loaded.model, loaded.normalization, loaded.knobs, loaded.feature_names, loaded.interval_s, out
        )
    except ValueError as error:
        raise UserError(f"{loaded.path / MODEL_ZIP} vs {CONFIG_YAML}'s env: {error}") from None


def parity_max_abs_diff(
    checkpoint: Checkpoint, export_dir: str | Path, num_samples: int = 256, seed: int = 0
) -> tuple[float, int]:
    """Largest |SB3 - onnxruntime| action difference, and the number of observations compared.

    Observations: Gaussian around the normalisation mean with its spread, plus one in eight far
    outside it (40 standard deviations) so that the observation clip is exercised. SB3's side
    normalises with the unpickled VecNormalize, so the numpy normalisation is checked too.
    """
    samples = sample_observations(checkpoint.normalization, len(checkpoint.feature_names), num_samples, seed)
    vecnormalize = checkpoint.vecnormalize
    normalised = vecnormalize.normalize_obs(samples) if vecnormalize is not None else samples
    expected, _ = checkpoint.model.predict(normalised, deterministic=True)
    actual, _ = OnnxPolicy.load(export_dir).predict(samples)
    return float(np.max(np.abs(actual - expected))), len(samples)


def sample_observations(
    normalization: Normalization | None, num_features: int, num_samples: int, seed: int = 0
) -> np.ndarray:
    """float32 observations around the normalisation mean (standard normal without one)."""
    rng = np.random.default_rng(seed)
    mean = normalization.mean if normalization is not None else np.zeros(num_features)
    std = np.sqrt(normalization.var) if normalization is not None else np.ones(num_features)
    samples = rng.normal(mean, std, size=(num_samples, num_features))
    far = rng.choice(num_samples, size=max(1, num_samples // 8), replace=False)
    samples[far] = mean + 40.0 * (std + 1.0) * rng.choice([-1.0, 1.0], size=(len(far), num_features))
    return samples.astype(np.float32)


def _env_facts(config_path: Path) -> tuple[tuple[KnobLike, ...], tuple[str, ...], float]:
    """Knobs, feature names and control interval of config.yaml's environment."""
    from envs.disagg_env import DisaggRoutingEnv

    if not config_path.is_file():
        raise UserError(f"{config_path}: missing; the export reads the training environment from it")
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{config_path}: not readable YAML ({error})") from None
    env_config, field = _env_section(config)
    if not isinstance(env_config, dict):
        raise UserError(
            f"{config_path}: needs the environment's config as a mapping, under `env` or under "
            f"`{ENV_ID}.env_kwargs` (RL Zoo's format, as training writes it)"
        )
    try:
        env = DisaggRoutingEnv(env_config)
    except (ValueError, TypeError) as error:  # EnvConfig and ScenarioError say which field and why
        raise UserError(
            f"{config_path}: field `{field}` is not a valid environment config: {error}"
        ) from None
    try:
        return tuple(env.knobs), env.obs_config.feature_names, float(env.config.interval_s)
    finally:
        env.close()


def _env_section(config: Any) -> tuple[Any, str]:
    """The environment's config in config.yaml, and its field: `env`, or RL Zoo's env_kwargs."""
    if isinstance(config, dict) and "env" in config:
        return config["env"], "env"
    zoo = config.get(ENV_ID) if isinstance(config, dict) else None
    if isinstance(zoo, dict):
        kwargs = zoo.get("env_kwargs")
        return ({} if kwargs is None else kwargs), f"{ENV_ID}.env_kwargs"  # none: EnvConfig's defaults
    return None, "env"


def _vecnormalize(path: Path) -> Any | None:
    """The unpickled VecNormalize, or None when training did not normalise (no file)."""
    if not path.is_file():
        return None
    try:
        with path.open("rb") as file:
            vecnormalize = pickle.load(file)  # VecNormalize.save pickles the object without its VecEnv
    except Exception as error:  # unpickling raises whatever the stored classes raise
        raise UserError(f"{path}: cannot be unpickled ({error})") from None
    rms = getattr(vecnormalize, "obs_rms", None)
    if not hasattr(vecnormalize, "norm_obs") or not hasattr(rms, "mean") or not hasattr(rms, "var"):
        raise UserError(
            f"{path}: not a VecNormalize of a Box observation space (needs obs_rms.mean and .var)"
        )
    return vecnormalize
