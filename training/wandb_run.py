"""Weights & Biases for `poa-gym train --wandb` (this module is imported only then).

Scalars reach W&B through SB3's TensorBoard logs (`sync_tensorboard=True`), so the namespaces
of `training.callbacks` hold there too; the evaluation plots are logged as images. Without W&B
credentials (no `WANDB_API_KEY`, no api.wandb.ai entry in ~/.netrc) the run is offline, under
`OUT/wandb/offline-run-*`; `wandb sync OUT/wandb/offline-run-*` uploads it later. `WANDB_MODE`
overrides the choice.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import wandb
from wandb.integration.sb3 import WandbCallback

DEFAULT_PROJECT = "poa-gym"


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start(config: Mapping[str, Any], out_dir: Path, project: str, name: str) -> tuple[Any, WandbCallback]:
    """The run (online or offline) and the SB3 callback that logs into it."""
    mode = os.environ.get("WANDB_MODE") or ("online" if has_credentials() else "offline")
    run = wandb.init(
        project=project,
        name=name,
        config=dict(config),
        dir=str(out_dir),
        mode=mode,
        job_type="train",
        sync_tensorboard=True,
    )
    return run, WandbCallback(verbose=0)


def log_images(run: Any, images: Mapping[str, Path]) -> None:
    run.log({key: wandb.Image(str(path)) for key, path in images.items()})


def log_summary(run: Any, values: Mapping[str, float]) -> None:
    for key, value in values.items():
        run.summary[key] = value


def finish(run: Any) -> Path | None:
    """Close the run; the offline run's directory (None when online)."""
    directory = Path(run.dir).parent if run.settings.mode == "offline" else None
    run.finish()
    return directory
