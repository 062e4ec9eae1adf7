"""Validation of an RLlib run against the knee controller, as SB3's `ValidationCallback` does.

Every `eval.every_steps` environment steps (checked after each RLlib iteration) the current
module is exported to `validation/candidate/export` and evaluated on the validation seeds; the
best one so far becomes the run's `export/`, and every validation goes to `validation.json` in the
SB3 run's format (`training.validation.ValidationBook`), so `poa-gym tune` reads both alike.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.checkpoint import CONFIG_FILE, EXPORT_DIR
from training.config import TrainConfig
from training.validation import ValidationBook


class RllibValidator:
    """Keeps the best export of a run; `export(algo, folder)` writes one."""

    def __init__(
        self, config: TrainConfig, out_dir: Path, jobs: int, export: Callable[[Any, Path], Any]
    ) -> None:
        self.config = config
        self.out_dir = out_dir
        self.export = export
        self.book = ValidationBook(config, out_dir, jobs)

    def due(self, num_timesteps: int) -> bool:
        last = self.book.history[-1]["num_timesteps"] if self.book.history else 0
        return num_timesteps - last >= self.config.eval.every_steps

    def validate(self, algo: Any, num_timesteps: int) -> float:
        candidate = self.out_dir / "validation" / "candidate"
        shutil.rmtree(candidate, ignore_errors=True)
        self.export(algo, candidate / EXPORT_DIR)
        shutil.copy2(self.out_dir / CONFIG_FILE, candidate / CONFIG_FILE)
        mine, knee, score = self.book.evaluate(candidate)
        if self.book.record(num_timesteps, mine, knee, score):
            shutil.rmtree(self.out_dir / EXPORT_DIR, ignore_errors=True)
            shutil.copytree(candidate / EXPORT_DIR, self.out_dir / EXPORT_DIR)
        return score
