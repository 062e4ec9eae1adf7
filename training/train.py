"""`poa-gym train`: PPO (stable-baselines3) on `PoAGym/DisaggRouting-v0`.

One environment per process (`SubprocVecEnv`; torch on one thread, as the MLP is tiny and the
simulator is the cost), observations normalised by `VecNormalize`, validation against the knee
controller on fixed seeds with the best model kept, snapshots for `--resume`, and a final test on
held-out seeds whose table goes to `eval.json`. The same config and seed give the same model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.evaluate import EVAL_SEED_BASE, Evaluation
from envs.errors import UserError
from training.checkpoint import (
    CONFIG_FILE,
    EVAL_FILE,
    EXPORT_DIR,
    LAST_DIR,
    MODEL_FILE,
    VECNORM_FILE,
    resumable,
    snapshot_steps,
    write_config,
    write_run_info,
)
from training.config import TrainConfig
from training.validation import candidate_name, comparison, run_evaluations

WANDB_PROJECT = "poa-gym"
LOG_DIR = "logs"
# Writes one scenario's final-test files (tables, plots) into a folder and returns the images to
# log. `poa-gym train` passes `eval.eval_report.write_report`: reports are eval's, above training.
ReportWriter = Callable[[Evaluation, Path], list[Path]]


@dataclass(frozen=True, slots=True)
class TrainRequest:
    """How to run a training (the config says what to train)."""

    out_dir: Path
    resume: bool = False
    wandb: bool = False
    wandb_project: str = WANDB_PROJECT
    progress_bar: bool = True
    final_test: bool = True
    jobs: int = 0  # evaluation processes; 0 = one per core
    command: tuple[str, ...] = ()
    report: ReportWriter | None = None  # the final test's per-scenario files; None: eval.json only


@dataclass(frozen=True, slots=True)
class TrainResult:
    out_dir: Path
    num_timesteps: int
    train_wall_s: float
    best_score: float
    knee_score: float
    comparison: dict[str, Any]
    wandb_dir: Path | None


def train(config: TrainConfig, request: TrainRequest) -> TrainResult:
    """Train, validate, export and test; everything lands in `request.out_dir`."""
    import torch

    torch.set_num_threads(1)
    if request.wandb and not all(importlib.util.find_spec(name) for name in ("wandb", "tensorboard")):
        raise UserError("--wandb needs W&B and TensorBoard: pip install 'poa-gym[wandb]'")
    out_dir = request.out_dir
    snapshot = _check_out_dir(out_dir, request.resume)
    saved_seeds = _saved_validation_seeds(out_dir) if snapshot else None
    write_config(config, out_dir)
    write_run_info(out_dir, request.command)
    jobs = request.jobs or os.cpu_count() or 1
    run, callbacks = None, []
    if request.wandb:  # before the model: W&B hooks TensorBoard writers as they are created
        from training import wandb_run

        run, callback = wandb_run.start(config.to_yaml_dict(), out_dir, request.wandb_project, out_dir.name)
        callbacks.append(callback)
    venv = make_training_env(config, snapshot)
    model = _model(config, venv, out_dir, snapshot)
    ours, validation = _callbacks(config, out_dir, jobs, saved_seeds)
    callbacks = ours + callbacks
    from stable_baselines3.common.callbacks import CallbackList

    start_s = time.perf_counter()
    remaining = config.n_timesteps - (snapshot_steps(snapshot) if snapshot else 0)
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=CallbackList(callbacks),
            progress_bar=request.progress_bar,
            reset_num_timesteps=snapshot is None,
        )
    if not validation.history or validation.history[-1]["num_timesteps"] < model.num_timesteps:
        validation.validate()  # the end of training is a candidate too
    train_wall_s = time.perf_counter() - start_s
    venv.close()
    table = final_test(config, out_dir, jobs, run, request.report) if request.final_test else {}
    knee_score = validation.history[-1]["knee_score"]
    wandb_dir = _finish_wandb(run, validation.best, knee_score) if run is not None else None
    return TrainResult(
        out_dir, int(model.num_timesteps), train_wall_s, validation.best, knee_score, table, wandb_dir
    )


def _check_out_dir(out_dir: Path, resume: bool) -> Path | None:
    snapshot = resumable(out_dir)
    if resume and snapshot is None:
        raise UserError(f"{out_dir}: nothing to resume (no {LAST_DIR}/{MODEL_FILE})")
    if not resume and (snapshot is not None or (out_dir / MODEL_FILE).exists()):
        raise UserError(f"{out_dir}: holds a training run; pass --resume to continue it, or another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    return snapshot


def _saved_validation_seeds(out_dir: Path) -> int | None:
    """The validation seed count in the run's saved config (before a resume rewrites it)."""
    from training.config import load_train_config

    try:
        return load_train_config(out_dir / CONFIG_FILE).eval.num_validation_seeds
    except UserError:
        return None


def make_training_env(config: TrainConfig, snapshot: Path | None = None) -> Any:
    """`n_envs` environments (one process each when more than one) under `VecNormalize`."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    from envs.disagg_env import DisaggRoutingEnv

    venv = make_vec_env(
        DisaggRoutingEnv,
        n_envs=config.n_envs,
        seed=config.seed,
        env_kwargs={"config": dict(config.env)},
        vec_env_cls=SubprocVecEnv if config.n_envs > 1 else DummyVecEnv,
    )
    if snapshot is not None and (snapshot / VECNORM_FILE).is_file():
        normalized = VecNormalize.load(str(snapshot / VECNORM_FILE), venv)
        normalized.training = True
        return normalized
    return VecNormalize(venv, gamma=float(config.ppo.get("gamma", 0.99)), **dict(config.normalize))


def _model(config: TrainConfig, venv: Any, out_dir: Path, snapshot: Path | None) -> Any:
    from stable_baselines3 import PPO

    if snapshot is not None:
        # The config's PPO arguments, not only the snapshot's: a resumed run is what its
        # config.yaml says (a new learning rate takes effect; the network must stay as it is).
        hyper = {k: v for k, v in config.ppo.items() if k != "policy_kwargs"}
        model = PPO.load(snapshot / MODEL_FILE, env=venv, device="cpu", **hyper)
    else:
        model = PPO(config.policy, venv, seed=config.seed, device="cpu", verbose=0, **dict(config.ppo))
        if config.start_at_defaults:
            _start_at_defaults(model, config)
    model.set_logger(_logger(out_dir / LOG_DIR))
    return model


def _start_at_defaults(model: Any, config: TrainConfig) -> None:
    """Centre the initial Gaussian on the scenario's own knobs (Dynamo's defaults), or on
    `start_knobs` where named, instead of the middle of the ranges: the first rollouts then explore
    around a known setting, and PPO need not spend its budget walking back from a poor one
    (temperature 0.5, say)."""
    import torch

    from agents.base import PolicyContext
    from envs.disagg_env import DisaggRoutingEnv

    context = PolicyContext.from_env(DisaggRoutingEnv(dict(config.env)))
    try:
        action = context.action_for(config.start_knobs)
    except ValueError as error:
        raise UserError(f"start_knobs: {error}") from None
    with torch.no_grad():  # SB3 initialises action_net with gain 0.01, so the bias is the mean
        model.policy.action_net.bias.copy_(torch.as_tensor(action, dtype=torch.float32))


def _logger(directory: Path) -> Any:
    """SB3's CSV log, and TensorBoard's when it is installed (`poa-gym[wandb]`; W&B syncs it)."""
    from stable_baselines3.common.logger import configure

    formats = ["csv"] + (["tensorboard"] if importlib.util.find_spec("tensorboard") else [])
    return configure(str(directory), formats)


def _callbacks(
    config: TrainConfig, out_dir: Path, jobs: int, saved_seeds: int | None
) -> tuple[list[Any], Any]:
    from training.callbacks import RolloutMetricsCallback, SnapshotCallback, ValidationCallback
    from training.export import export_checkpoint

    validation = ValidationCallback(config, out_dir, jobs, export_checkpoint, saved_seeds)
    return [RolloutMetricsCallback(), SnapshotCallback(config, out_dir / LAST_DIR), validation], validation


def final_test(
    config: TrainConfig, out_dir: Path, jobs: int, run: Any, report: ReportWriter | None = None
) -> dict[str, Any]:
    """The selected policy, the knee controller and the default on the held-out test seeds: the
    comparison goes to `eval.json`, each scenario's files (with `report`) to `eval/SCENARIO/`."""
    if config.eval.num_test_seeds == 0 or not (out_dir / EXPORT_DIR).is_dir():
        return {}
    learned = candidate_name(out_dir)
    policies = [learned, *config.eval.test_policies]
    evaluations = run_evaluations(config, policies, config.eval.num_test_seeds, EVAL_SEED_BASE, jobs)
    images = {}
    for scenario, evaluation in evaluations.items():
        for path in report(evaluation, out_dir / "eval" / scenario) if report else ():
            images[f"eval/{scenario}/{path.stem}"] = path
    table = comparison(evaluations, learned)
    (out_dir / EVAL_FILE).write_text(json.dumps({"policy": learned, "scenarios": table}, indent=2) + "\n")
    if run is not None:
        from training import wandb_run

        wandb_run.log_images(run, images)
    return table


def _finish_wandb(run: Any, best_score: float, knee_score: float) -> Path | None:
    from training import wandb_run

    wandb_run.log_summary(run, {"eval/best_mean_reward": best_score, "eval/knee_mean_reward": knee_score})
    return wandb_run.finish(run)
