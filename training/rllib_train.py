"""`poa-gym train --engine rllib`: RLlib's PPO on the same environment, config and export contract.

RLlib does not see Gymnasium's registry, so the environment is registered with Ray's
`register_env` and built from the same `env` config dict as SB3's run. The config's SB3 PPO
settings map onto RLlib's (`RLLIB_NAMES`); `n_steps * num_env_runners` steps make one training
batch. Without `--ray-address` a local Ray instance starts on the machine's cores; with it, the
run joins an existing cluster (`training.ray_engine.init_ray`).

The checkpoint directory keeps the SB3 layout where it can: `config.yaml`, `run.json`, `logs/`
(`progress.csv`), `export/` (`policy.onnx` + `policy.json`, so `poa-gym eval ppo:DIR` and the
sidecar take it unchanged) and `eval.json`; RLlib's own checkpoint is `rllib/` in place of
`model.zip`. With `normalize.norm_obs` (SB3's setting) observations go through RLlib's
`MeanStdFilter`, whose statistics the export carries in the loader's formula. As with SB3, the
initial policy's mean sits on the scenario's knobs (`start_at_defaults`, `start_knobs`).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from envs.errors import UserError
from training import ray_engine
from training.checkpoint import CONFIG_FILE, write_config, write_run_info
from training.config import TrainConfig
from training.ray_engine import init_ray
from training.rllib_validation import RllibValidator

if TYPE_CHECKING:
    from training.train import ReportWriter

RLLIB_DIR = "rllib"
ENV_NAME = "poa-gym-disagg-routing"
DEFAULT_MODULE = "default_policy"  # RLlib's module id of a single-agent run
INITIAL_HEAD_GAIN = 0.01  # SB3 initialises its action head with gain 0.01: the bias is the mean
# SB3 PPO setting -> RLlib PPOConfig.training keyword.
RLLIB_NAMES = {
    "learning_rate": "lr",
    "gamma": "gamma",
    "gae_lambda": "lambda_",
    "n_epochs": "num_epochs",
    "batch_size": "minibatch_size",
    "clip_range": "clip_param",
    "ent_coef": "entropy_coeff",
    "vf_coef": "vf_loss_coeff",
    "max_grad_norm": "grad_clip",
}


@dataclass(frozen=True, slots=True)
class RllibRequest:
    out_dir: Path
    ray_address: str | None = None
    num_env_runners: int | None = None  # None: the config's n_envs
    final_test: bool = True
    jobs: int = 0
    command: tuple[str, ...] = ()
    progress: bool = True
    wandb: bool = False
    wandb_project: str = "poa-gym"
    report: ReportWriter | None = None  # as TrainRequest.report


@dataclass(frozen=True, slots=True)
class RllibResult:
    out_dir: Path
    num_timesteps: int
    num_iterations: int
    train_wall_s: float
    comparison: dict[str, Any]


class RllibActor(torch.nn.Module):
    """obs -> the RL module's action distribution inputs -> the mean (their first half) -> clip."""

    def __init__(self, module: Any, num_knobs: int) -> None:
        super().__init__()
        self.module = module
        self.num_knobs = num_knobs

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        inputs = self.module.forward_inference({"obs": observation})["action_dist_inputs"]
        return torch.clamp(inputs[:, : self.num_knobs], -1.0, 1.0)


def ray_missing() -> bool:
    """Ray, or its RLlib, is not installed."""
    return ray_engine.ray_missing() or importlib.util.find_spec("ray.rllib") is None


def _make_env(env_config: dict[str, Any]) -> Any:
    from envs.disagg_env import DisaggRoutingEnv

    return DisaggRoutingEnv(dict(env_config))


def ppo_config(config: TrainConfig, num_env_runners: int) -> Any:
    """RLlib's PPOConfig for the run: the same environment, spaces, network and PPO settings."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    ppo = dict(config.ppo)
    n_steps = int(ppo.get("n_steps", 2048))
    training = {RLLIB_NAMES[k]: v for k, v in ppo.items() if k in RLLIB_NAMES and not callable(v)}
    training["train_batch_size_per_learner"] = n_steps * max(1, num_env_runners)
    hidden = list((ppo.get("policy_kwargs") or {}).get("net_arch", {}).get("pi", [64, 64]))
    normalize = dict(config.normalize)
    runners: dict[str, Any] = {}
    if normalize.get("norm_obs", True):
        runners["env_to_module_connector"] = functools.partial(
            _mean_std_filter, normalize.get("clip_obs", 10.0)
        )
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=dict(config.env))
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=1,
            rollout_fragment_length=n_steps,
            **runners,
        )
        .training(**training)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=hidden, fcnet_activation="tanh"))
        .debugging(seed=config.seed)
    )


def _mean_std_filter(clip_obs: float, *_: Any, **__: Any) -> Any:
    """RLlib's observation filter (the env-to-module connector), SB3's `clip_obs` as its clip."""
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter

    return MeanStdFilter(clip_by_value=float(clip_obs))


def filter_normalization(algo: Any) -> Any:
    """The trained filter's statistics as the export's normalisation, or None without a filter.

    RLlib computes clip((x - mean) / (std + SMALL_NUMBER)); the loader computes clip((x - mean) /
    sqrt(var + epsilon)), which is the same with var = (std + SMALL_NUMBER)^2 and epsilon = 0.
    """
    import numpy as np
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter
    from ray.rllib.utils.filter import SMALL_NUMBER

    from agents.onnx_policy import Normalization

    pieces = [p for p in algo.env_runner._env_to_module.connectors if isinstance(p, MeanStdFilter)]
    if not pieces:
        return None
    (running_filter,) = pieces[0]._filters.values()  # one agent
    std = np.asarray(running_filter.running_stats.std, dtype=np.float64)
    return Normalization(
        mean=np.asarray(running_filter.running_stats.mean, dtype=np.float64),
        var=(std + SMALL_NUMBER) ** 2,
        clip_obs=float(running_filter.clip),
        epsilon=0.0,
    )


def train_rllib(config: TrainConfig, request: RllibRequest) -> RllibResult:
    """Train for `n_timesteps`, export, and test the export as `poa-gym train` does."""
    if ray_missing():
        raise UserError(f"--engine rllib needs Ray's RLlib: {ray_engine.INSTALL_HINT}")
    import ray
    from ray.tune.registry import register_env

    out_dir = request.out_dir
    if (out_dir / RLLIB_DIR).exists():
        raise UserError(f"{out_dir}: holds an RLlib run already; pass another --out")
    write_config(config, out_dir)
    write_run_info(out_dir, request.command)
    num_env_runners = request.num_env_runners or config.n_envs
    run = None
    if request.wandb:
        from training import wandb_run

        run, _ = wandb_run.start(config.to_yaml_dict(), out_dir, request.wandb_project, out_dir.name)
    started = init_ray(request.ray_address, min_cpus=num_env_runners + 1)  # + the learner
    try:
        register_env(ENV_NAME, _make_env)
        algo = ppo_config(config, num_env_runners).build_algo()
        if config.start_at_defaults:
            start_at_defaults(algo, config)
        export = functools.partial(_export_algo, out_dir / CONFIG_FILE)
        validator = RllibValidator(config, out_dir, request.jobs or os.cpu_count() or 1, export)
        start_s = time.perf_counter()
        steps, iterations = _train_loop(algo, config.n_timesteps, out_dir, request.progress, run, validator)
        if not validator.book.history or validator.book.history[-1]["num_timesteps"] < steps:
            validator.validate(algo, steps)  # the end of training is a candidate too
        train_wall_s = time.perf_counter() - start_s
        algo.save_to_path(str((out_dir / RLLIB_DIR).resolve()))
        algo.stop()
    finally:
        if started:
            ray.shutdown()
    table = _final_test(config, out_dir, request, run) if request.final_test else {}
    if run is not None:
        from training import wandb_run

        wandb_run.finish(run)
    return RllibResult(out_dir, steps, iterations, train_wall_s, table)


def start_at_defaults(algo: Any, config: TrainConfig) -> None:
    """Centre the initial Gaussian on the scenario's knobs (or `start_knobs`), and its log-std on
    `policy_kwargs.log_std_init` if set, as SB3's run does: the policy head's last layer gets
    SB3's small gain and the bias, on the learner and then on every env runner."""
    from agents.base import PolicyContext

    env = _make_env(dict(config.env))
    try:
        action = PolicyContext.from_env(env).action_for(config.start_knobs)
    except ValueError as error:
        raise UserError(f"start_knobs: {error}") from None
    finally:
        env.close()
    log_std = (dict(config.ppo).get("policy_kwargs") or {}).get("log_std_init")
    num_knobs = len(action)

    def centre(learner: Any) -> None:
        last = learner.module[DEFAULT_MODULE].pi.net.mlp[-1]
        with torch.no_grad():
            last.weight.mul_(INITIAL_HEAD_GAIN)
            last.bias[:num_knobs] = torch.as_tensor(action, dtype=last.bias.dtype)
            if log_std is not None:
                last.bias[num_knobs:] = float(log_std)

    algo.learner_group.foreach_learner(centre)
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)


def _export_algo(config_path: Path, algo: Any, out_dir: Path) -> Any:
    return export_rllib_module(algo.get_module(), filter_normalization(algo), config_path, out_dir)


def _train_loop(
    algo: Any, total_steps: int, out_dir: Path, progress: bool, run: Any, validator: RllibValidator
) -> tuple[int, int]:
    """`algo.train()` until `total_steps`, validating when due; each iteration to
    logs/progress.csv and, with a W&B run, under SB3's metric names (`rollout/ep_rew_mean`,
    `time/total_timesteps`, `eval/mean_reward`)."""
    from tqdm import tqdm

    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    steps, iterations = 0, 0
    with (
        (logs / "progress.csv").open("w", newline="") as file,
        tqdm(total=total_steps, disable=not progress, unit="step") as bar,
    ):
        writer = csv.writer(file)
        writer.writerow(["iteration", "env_steps", "episode_return_mean", "time_s"])
        start_s = time.perf_counter()
        while steps < total_steps:
            result = algo.train()
            runners = result.get("env_runners", {})
            new_steps = int(runners.get("num_env_steps_sampled_lifetime", steps))
            bar.update(new_steps - steps)
            steps, iterations = new_steps, iterations + 1
            episode_return = runners.get("episode_return_mean")
            writer.writerow([iterations, steps, episode_return, time.perf_counter() - start_s])
            file.flush()
            metrics = {"rollout/ep_rew_mean": episode_return, "time/total_timesteps": steps}
            if validator.due(steps) and steps < total_steps:
                metrics["eval/mean_reward"] = validator.validate(algo, steps)
            if run is not None:
                run.log(metrics, step=steps)
    return steps, iterations


def export_rllib_module(module: Any, normalization: Any, config_path: Path, out_dir: Path) -> Any:
    """The RL module's deterministic action (the Gaussian's mean, clipped to [-1, 1]) as
    `policy.onnx`, with `policy.json` for the environment in config.yaml."""
    from training.export import _env_facts, write_export
    from training.onnx_graph import write_actor_onnx

    knobs, feature_names, interval_s = _env_facts(config_path)
    actor = RllibActor(module, len(knobs)).eval()
    write_onnx = functools.partial(write_actor_onnx, actor, len(feature_names))
    return write_export(write_onnx, normalization, knobs, feature_names, interval_s, out_dir)


def _final_test(config: TrainConfig, out_dir: Path, request: RllibRequest, run: Any) -> dict[str, Any]:
    from training.train import final_test

    return final_test(config, out_dir, request.jobs or os.cpu_count() or 1, run, request.report)
