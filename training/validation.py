"""Validation during training and the final test, both through `poa-gym eval`'s engine.

A candidate model is exported (ONNX) and evaluated as `ppo:DIR`, the same way `poa-gym eval`
and the router sidecar run it, so what is selected is exactly what ships. Validation episodes
use seeds 900000 + i; the final test uses the eval seeds 1000000 + i; training seeds lie below
both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.episodes import EpisodeSetup, PhaseSummary
from agents.evaluate import Evaluation, evaluate
from envs.schedules import ScheduleConfig
from training.config import TrainConfig

VALIDATION_SEED_BASE = 900_000
PHASE_METRICS = ("poa_hat", "ttft_p99_s", "itl_p99_s", "throughput_rps")
METRICS = (*PHASE_METRICS, "mean_reward")


@dataclass(frozen=True, slots=True)
class ScenarioScore:
    """One policy on one scenario: the mean episode reward, and its saturated-phase figures."""

    scenario: str
    policy: str
    mean_reward: float
    saturated: Mapping[str, float]

    def metrics(self) -> dict[str, float]:
        return {"mean_reward": self.mean_reward, **{f"saturated_{k}": v for k, v in self.saturated.items()}}


def episode_setup(config: TrainConfig, scenario: str) -> EpisodeSetup:
    env = config.env_config()
    evaluation = config.eval
    return EpisodeSetup(
        scenario,
        ScheduleConfig(**dict(evaluation.schedule)),
        num_intervals=evaluation.num_intervals,
        interval_s=env.interval_s,
        warmup_s=env.warmup_s,
        overrides=env.overrides,
        knee_band=evaluation.knee_band(scenario),
        # The training action space (levers included), so a candidate and its baselines share it.
        knobs=tuple((k.name, k.low, k.high) for k in env.knobs) if env.knobs else None,
        # Selected by the reward it was trained on (an ITL hinge, say), not the default one.
        reward=env.reward,
    )


def run_evaluations(
    config: TrainConfig,
    policies: Sequence[str],
    num_seeds: int,
    seed_base: int,
    jobs: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Evaluation]:
    """Every eval scenario, these policies, `num_seeds` seeds from `seed_base`."""
    return {
        scenario: evaluate(
            episode_setup(config, scenario), policies, num_seeds, jobs, progress=progress, seed_base=seed_base
        )
        for scenario in config.eval.scenarios
    }


def scores(evaluations: Mapping[str, Evaluation]) -> list[ScenarioScore]:
    """Per scenario and policy, from the seed-mean summaries."""
    result = []
    for scenario, evaluation in evaluations.items():
        by_policy: dict[str, dict[str, PhaseSummary]] = {}
        for row in evaluation.summary():
            by_policy.setdefault(row.policy, {})[row.phase] = row
        for policy, phases in by_policy.items():
            saturated = phases.get("saturated")
            figures = {k: getattr(saturated, k) for k in PHASE_METRICS} if saturated else {}
            result.append(ScenarioScore(scenario, policy, phases["all"].mean_reward, figures))
    return result


def mean_reward(items: Sequence[ScenarioScore], policy: str) -> float:
    """The selection score: mean episode reward over the eval scenarios."""
    values = [item.mean_reward for item in items if item.policy == policy]
    return sum(values) / len(values) if values else -math.inf


def comparison(evaluations: Mapping[str, Evaluation], learned: str) -> dict[str, Any]:
    """The final table: every policy x phase per scenario, and the learned policy's ratios to the
    knee controller and the static default (ratios < 1 on PoA-hat and TTFT favour the learner)."""
    result: dict[str, Any] = {}
    for scenario, evaluation in evaluations.items():
        table = {
            row.policy + "/" + row.phase: {k: _finite(getattr(row, k)) for k in METRICS}
            for row in evaluation.summary()
        }
        result[scenario] = {"summary": table, "ratios": _ratios(table, learned)}
    return result


def _ratios(table: Mapping[str, Mapping[str, float | None]], learned: str) -> dict[str, float | None]:
    def ratio(policy: str, phase: str, metric: str) -> float | None:
        mine = table.get(f"{learned}/{phase}", {}).get(metric)
        theirs = table.get(f"{policy}/{phase}", {}).get(metric)
        return mine / theirs if mine is not None and theirs else None

    return {
        "poa_hat_saturated_vs_knee": ratio("knee", "saturated", "poa_hat"),
        "ttft_p99_saturated_vs_knee": ratio("knee", "saturated", "ttft_p99_s"),
        "throughput_all_vs_default": ratio("default", "all", "throughput_rps"),
        "poa_hat_below_vs_default": ratio("default", "below", "poa_hat"),
        "ttft_p99_below_vs_default": ratio("default", "below", "ttft_p99_s"),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def candidate_name(directory: Path) -> str:
    return f"ppo:{directory}"


class ValidationBook:
    """What both engines' validation shares: the history (`validation.json`), the best score,
    and the knee controller's score, evaluated once per run.

    Scores on different numbers of validation seeds are not compared: each entry records its
    `num_seeds`, and the best is taken over entries on the current count. A run resumed with
    more seeds (`poa-gym train --resume --validation-seeds N`) first scores its selected model
    on them (an entry marked `rescored`), so a new candidate must beat it on equal terms.
    `legacy_num_seeds` is the count of entries written before entries carried one (the run's
    saved config); None means the current count."""

    def __init__(self, config: Any, out_dir: Path, jobs: int, legacy_num_seeds: int | None = None) -> None:
        self.config = config
        self.out_dir = out_dir
        self.jobs = jobs
        self.num_seeds = int(config.eval.num_validation_seeds)
        path = out_dir / "validation.json"
        self.history: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
        for entry in self.history:
            entry.setdefault("num_seeds", legacy_num_seeds or self.num_seeds)
        comparable = [entry["score"] for entry in self.history if entry["num_seeds"] == self.num_seeds]
        self.best = max(comparable, default=-math.inf)
        self._knee: list[ScenarioScore] | None = None

    def evaluate(self, candidate: Path) -> tuple[list[ScenarioScore], list[ScenarioScore], float]:
        """The candidate's and the knee controller's scores, and the candidate's selection score."""
        if self._knee is None:  # the baseline does not change during a run
            self._knee = self.score(["knee"])
        self._rescore_selected()
        name = candidate_name(candidate)
        mine = self.score([name])
        return mine, self._knee, mean_reward(mine, name)

    def _rescore_selected(self) -> None:
        """The selected model on the current seeds, when it was chosen on another count."""
        if self.best > -math.inf or not self.history or not (self.out_dir / "export").is_dir():
            return
        selected = [entry for entry in self.history if entry["selected"]]
        name = candidate_name(self.out_dir)
        mine = self.score([name])
        steps = selected[-1]["num_timesteps"] if selected else self.history[-1]["num_timesteps"]
        self._append(steps, mine, mean_reward(mine, name), selected=True, rescored=True)

    def score(self, policies: list[str]) -> list[ScenarioScore]:
        evaluations = run_evaluations(
            self.config, policies, self.config.eval.num_validation_seeds, VALIDATION_SEED_BASE, self.jobs
        )
        return scores(evaluations)

    def record(
        self, num_timesteps: int, mine: list[ScenarioScore], knee: list[ScenarioScore], score: float
    ) -> bool:
        """Append the validation to `validation.json`; True when it is the best so far."""
        improved = score > self.best
        self._append(num_timesteps, mine, score, selected=improved, knee=knee)
        return improved

    def _append(
        self,
        num_timesteps: int,
        mine: list[ScenarioScore],
        score: float,
        selected: bool,
        knee: list[ScenarioScore] | None = None,
        rescored: bool = False,
    ) -> None:
        self.best = max(self.best, score)
        entry = {
            "num_timesteps": int(num_timesteps),
            "score": score,
            "knee_score": mean_reward(knee or self._knee or [], "knee"),
            "selected": selected,
            "num_seeds": self.num_seeds,
            "scenarios": {item.scenario: item.metrics() for item in mine},
        }
        if rescored:
            entry["rescored"] = True
        self.history.append(entry)
        (self.out_dir / "validation.json").write_text(json.dumps(self.history, indent=2) + "\n")
