"""The checkpoint directory: what a training run leaves behind, and how a run resumes.

checkpoints/NAME/
  model.zip          the selected model (best validation reward), SB3's format
  vecnormalize.pkl   its observation-normalisation statistics (SB3's VecNormalize)
  config.yaml        the resolved training config (RL Zoo's format plus ours)
  run.json           the exact command, the git commit, library versions
  validation.json    every validation: step, scores, and the knee controller's baseline
  eval.json          the final comparison on held-out test seeds
  export/            policy.onnx and policy.json (`poa-gym export`)
  last/              the latest model, statistics and step count, for `--resume`
  logs/              SB3's progress.csv, and TensorBoard events (W&B syncs them)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from training.config import TrainConfig

MODEL_FILE = "model.zip"
VECNORM_FILE = "vecnormalize.pkl"
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
STATE_FILE = "state.json"
VALIDATION_FILE = "validation.json"
EVAL_FILE = "eval.json"
EXPORT_DIR = "export"
LAST_DIR = "last"


def write_config(config: TrainConfig, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_FILE
    path.write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    return path


def write_run_info(directory: Path, command: Sequence[str]) -> Path:
    """The command and the code it ran: enough to reproduce the run."""
    import stable_baselines3
    import torch

    info = {
        "command": list(command),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
    }
    path = directory / RUN_FILE
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def _git(*args: str) -> str | None:
    """Git's answer in the package's own checkout; None outside a checkout (an installed wheel)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def save_snapshot(model: Any, venv: Any, config: TrainConfig, directory: Path) -> None:
    """Model, normalisation statistics, config and step count, replacing the directory whole:
    an interruption mid-save leaves the previous snapshot (or `.old`) intact."""
    from stable_baselines3.common.vec_env import VecNormalize

    staging = directory.with_name(directory.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save(staging / MODEL_FILE)
    if isinstance(venv, VecNormalize):
        venv.save(str(staging / VECNORM_FILE))
    write_config(config, staging)
    (staging / STATE_FILE).write_text(json.dumps({"num_timesteps": int(model.num_timesteps)}) + "\n")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def resumable(directory: Path) -> Path | None:
    """The snapshot to resume from (`last/`, or `last.old/` if a save was cut short)."""
    for name in (LAST_DIR, LAST_DIR + ".old"):
        candidate = directory / name
        if (candidate / MODEL_FILE).is_file():
            return candidate
    return None


def snapshot_steps(directory: Path) -> int:
    return int(json.loads((directory / STATE_FILE).read_text())["num_timesteps"])


def promote(snapshot: Path, directory: Path) -> None:
    """Make a validated snapshot (with its export) the run's selected model."""
    for name in (MODEL_FILE, VECNORM_FILE):
        if (snapshot / name).is_file():
            shutil.copy2(snapshot / name, directory / name)
    if (snapshot / EXPORT_DIR).is_dir():
        shutil.rmtree(directory / EXPORT_DIR, ignore_errors=True)
        shutil.copytree(snapshot / EXPORT_DIR, directory / EXPORT_DIR)
