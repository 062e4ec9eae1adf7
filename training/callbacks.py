"""SB3 callbacks: per-rollout environment metrics, snapshots for `--resume`, and validation.

Metric namespaces (TensorBoard tags, synced to W&B as they are):
  train/          PoA-hat, TTFT P99, throughput and concurrency of the rollout's intervals
  reward_terms/   each reward term's mean over the rollout
  knobs/          each knob's mean value over the rollout (the learned schedule's centre)
  eval/           validation: per scenario, the candidate's and the knee controller's scores
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from training.checkpoint import promote, save_snapshot
from training.config import TrainConfig
from training.validation import ScenarioScore, ValidationBook, mean_reward

_INFO_METRICS = ("poa_hat", "ttft_p99_s", "throughput_rps", "concurrency")


class RolloutMetricsCallback(BaseCallback):
    """Means of the environments' `info` over each rollout, under train/, reward_terms/, knobs/."""

    def __init__(self) -> None:
        super().__init__()
        self._sums: dict[str, list[float]] = defaultdict(list)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            for name in _INFO_METRICS:
                if name in info and math.isfinite(info[name]):
                    self._sums[f"train/{name}"].append(float(info[name]))
            for name, value in info.get("reward_terms", {}).items():
                self._sums[f"reward_terms/{name}"].append(float(value))
            for name, value in info.get("knobs", {}).items():
                self._sums[f"knobs/{name}"].append(float(value))
        return True

    def _on_rollout_end(self) -> None:
        for key, values in sorted(self._sums.items()):
            self.logger.record(key, float(np.mean(values)))
        self._sums.clear()


class SnapshotCallback(BaseCallback):
    """Saves the latest model and statistics every `every_steps` (and at the end) for `--resume`."""

    def __init__(self, config: TrainConfig, directory: Path) -> None:
        super().__init__()
        self.config = config
        self.directory = directory
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = self.num_timesteps + self.config.save_every_steps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.config.save_every_steps
            self.save()
        return True

    def _on_training_end(self) -> None:
        self.save()

    def save(self) -> None:
        save_snapshot(self.model, self.model.get_env(), self.config, self.directory)


class ValidationCallback(BaseCallback):
    """Every `eval.every_steps`, evaluates the current policy, exported, on the validation seeds;
    keeps the best by mean episode reward and logs it next to the knee controller's score."""

    def __init__(
        self,
        config: TrainConfig,
        out_dir: Path,
        jobs: int,
        export: Callable[[Path, Path], object],
        legacy_num_seeds: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.out_dir = out_dir
        self.export = export
        self.book = ValidationBook(config, out_dir, jobs, legacy_num_seeds)
        self._next = 0

    @property
    def history(self) -> list[dict]:
        return self.book.history

    @property
    def best(self) -> float:
        return self.book.best

    def _on_training_start(self) -> None:
        self._next = self.num_timesteps + self.config.eval.every_steps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.config.eval.every_steps
            self.validate()
        return True

    def validate(self) -> float:
        """Evaluate the current policy now; returns its score (and promotes it if best)."""
        candidate = self.out_dir / "validation" / "candidate"
        save_snapshot(self.model, self.model.get_env(), self.config, candidate)
        self.export(candidate, candidate / "export")
        mine, knee, score = self.book.evaluate(candidate)
        self._log(mine, "eval")
        self._log(knee, "eval/knee")
        self.logger.record("eval/mean_reward", score)
        self.logger.record("eval/knee_mean_reward", mean_reward(knee, "knee"))
        if self.book.record(self.num_timesteps, mine, knee, score):
            promote(candidate, self.out_dir)
        self.logger.dump(self.num_timesteps)
        return score

    def _log(self, items: list[ScenarioScore], prefix: str) -> None:
        for item in items:
            for name, value in item.metrics().items():
                if math.isfinite(value):
                    self.logger.record(f"{prefix}/{item.scenario}/{name}", value)
