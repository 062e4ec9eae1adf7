"""`poa-gym tune`: independent SB3 trainings as Ray Tune trials, and one table of their results.

A grid names what varies: `seed=0,1,2`, any SB3 PPO argument (`learning_rate=1e-4,3e-4`) or an
environment field (`env.scenarios=[a],[b]`); values are YAML. Every combination is one trial: the
base config with those values, trained by `training.train.train` into `OUT/<trial>/` (the usual
checkpoint layout, export and held-out test included), with the config's `n_envs` CPUs. The
trials' `validation.json` and `eval.json` are collected into `OUT/tune.csv` and `OUT/tune.json`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from envs.errors import UserError
from training.config import TrainConfig

if TYPE_CHECKING:
    from training.train import ReportWriter


@dataclass(frozen=True, slots=True)
class Trial:
    name: str
    values: dict[str, Any]
    config: TrainConfig


def parse_grid(entries: Sequence[str]) -> dict[str, list[Any]]:
    """`KEY=V1,V2,...` entries as {key: [values]} (values parsed as YAML)."""
    grid: dict[str, list[Any]] = {}
    for entry in entries:
        key, sep, text = entry.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise UserError(f"--grid {entry!r}: expected KEY=V1,V2,...")
        if key in grid:
            raise UserError(f"--grid: {key} is given twice")
        try:
            grid[key] = [yaml.safe_load(part) for part in _split(text)]
        except yaml.YAMLError as error:
            raise UserError(f"--grid {entry!r}: a value is not YAML ({error})") from None
    return grid


def _split(text: str) -> list[str]:
    """Split on commas outside brackets, so `env.scenarios=[a,b],[c]` gives two values."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def trials(base: TrainConfig, grid: Mapping[str, list[Any]]) -> list[Trial]:
    """Every combination of the grid, as a validated config (UserError names the bad key)."""
    keys = list(grid)
    found = []
    for combination in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combination, strict=True))
        name = "_".join(f"{k.removeprefix('env.')}={_short(v)}" for k, v in values.items()) or "base"
        found.append(Trial(name, values, _apply(base, values)))
    return found


def _short(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text)[:40]


def _apply(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    changes: dict[str, Any] = {}
    ppo, env = dict(base.ppo), dict(base.env)
    for key, value in values.items():
        if key == "seed":
            changes["seed"] = value
        elif key.startswith("env."):
            env[key.removeprefix("env.")] = value
        else:
            ppo[key] = value
    try:
        return dataclasses.replace(base, ppo=ppo, env=env, **changes)
    except (ValueError, TypeError) as error:
        raise UserError(f"--grid {dict(values)}: {error}") from None


def run_tune(
    base: TrainConfig,
    grid: Mapping[str, list[Any]],
    out_dir: Path,
    address: str | None,
    report: ReportWriter | None = None,
) -> list[dict]:
    """Fit every trial on Ray Tune; the collected rows, also written to OUT/tune.{csv,json}.
    `report` writes each trial's final-test files, as `TrainRequest.report`."""
    from ray import tune

    from training.ray_engine import init_ray

    found = trials(base, grid)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {t.name: t for t in found}
    cpus_per_trial = max(t.config.n_envs for t in found)
    started = init_ray(address, min_cpus=cpus_per_trial)
    try:
        trainable = tune.with_resources(_trainable(by_name, out_dir, report), {"cpu": cpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(list(by_name))},
            run_config=tune.RunConfig(storage_path=str(out_dir / "ray"), name="tune", verbose=0),
        )
        tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    rows = [collect(out_dir / t.name, t.name, t.values) for t in found]
    _write(rows, out_dir)
    return rows


def _trainable(by_name: Mapping[str, Trial], out_dir: Path, report: ReportWriter | None) -> Any:
    def train_one(params: dict[str, Any]) -> dict[str, Any]:
        from training.train import TrainRequest, train

        trial = by_name[params["trial"]]
        request = TrainRequest(
            out_dir=out_dir / trial.name, progress_bar=False, jobs=trial.config.n_envs, report=report
        )
        result = train(trial.config, request)
        return {"best_validation": result.best_score, "knee_validation": result.knee_score}

    return train_one


def collect(directory: Path, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """One trial's row: its grid values, its best validation, and its test ratios."""
    history = json.loads((directory / "validation.json").read_text())  # one entry per validation
    row: dict[str, Any] = {"trial": name, **{k: values[k] for k in values}}
    row["best_validation"] = max((h["score"] for h in history), default=None)
    row["knee_validation"] = history[-1]["knee_score"] if history else None
    eval_path = directory / "eval.json"
    if eval_path.is_file():
        for scenario, entry in json.loads(eval_path.read_text())["scenarios"].items():
            for ratio, value in entry["ratios"].items():
                row[f"{scenario}/{ratio}"] = value
    return row


def _write(rows: list[dict[str, Any]], out_dir: Path) -> None:
    import csv

    (out_dir / "tune.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (out_dir / "tune.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(
            {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()} for r in rows
        )
