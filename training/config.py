"""The training configuration: an RL-Zoo hyperparameter file plus poa-gym's own section.

The file is RL Zoo's format, keyed by the env id, so the same file trains with
`python -m rl_zoo3.train --algo ppo --env PoAGym/DisaggRouting-v0 --gym-packages envs --conf-file F`:

    PoAGym/DisaggRouting-v0:          # RL Zoo: n_envs, n_timesteps, policy, normalize, env_kwargs,
      n_envs: 16                      # and every other key goes to PPO(...)
      ...
    poa-gym:                          # ours (RL Zoo ignores other top-level keys): seed, the
      seed: 0                         # validation and test evaluations, checkpoint cadence
      eval: {...}

RL Zoo evaluates `normalize` and `policy_kwargs` strings as Python; we parse them as literals
only (`ast.literal_eval`), so write them as literals (dicts, lists, numbers, booleans).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envs.disagg_env import ENV_ID
from envs.env_config import EnvConfig
from envs.errors import UserError
from envs.sim.knobs import ALL_KNOBS, LEVERS, check_knob_value

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "ppo.yaml"
OURS = "poa-gym"
# Keys RL Zoo consumes itself; everything else in the env-id block is a PPO argument.
ZOO_KEYS = ("n_envs", "n_timesteps", "policy", "normalize", "env_kwargs")
# PPO arguments the trainer sets itself (from the command line or the run's layout).
VECNORMALIZE_ARGS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma")
RESERVED_PPO_ARGS = ("env", "policy", "seed", "verbose", "tensorboard_log", "device", "_init_setup_model")


@dataclass(frozen=True, slots=True)
class EvalConfig:
    """Validation during training (model selection) and the final held-out test.

    Validation episodes use seeds `VALIDATION_SEED_BASE + i` and the final test uses
    `EVAL_SEED_BASE + i` (`poa-gym eval`'s), so the reported numbers come from episodes that
    neither training nor model selection saw."""

    scenarios: tuple[str, ...] = ("llama70b-b200-3p3d-multiturn",)
    knee_bands: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    schedule: Mapping[str, Any] = field(default_factory=lambda: {"kind": "ramp"})
    num_intervals: int = 60
    num_validation_seeds: int = 2
    every_steps: int = 20_000
    num_test_seeds: int = 3
    test_policies: tuple[str, ...] = ("knee", "default")

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ValueError("eval.scenarios: needs at least one scenario")
        for name, band in self.knee_bands.items():
            if len(band) != 2 or not 0 < band[0] < band[1]:
                raise ValueError(f"eval.knee_bands.{name}: needs [low, high] with 0 < low < high")
        if self.num_intervals < 1 or self.num_validation_seeds < 1 or self.num_test_seeds < 0:
            raise ValueError("eval: num_intervals and num_validation_seeds >= 1, num_test_seeds >= 0")
        if self.every_steps < 1:
            raise ValueError("eval.every_steps: must be >= 1")

    def knee_band(self, scenario: str) -> tuple[int, int]:
        return tuple(self.knee_bands.get(scenario, (96, 128)))  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything a training run depends on; validated on construction."""

    env: Mapping[str, Any] = field(default_factory=dict)  # EnvConfig.from_dict's input
    n_envs: int = 1
    n_timesteps: int = 100_000
    policy: str = "MlpPolicy"
    normalize: Mapping[str, Any] = field(default_factory=lambda: {"norm_obs": True, "norm_reward": False})
    ppo: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    save_every_steps: int = 10_000
    start_at_defaults: bool = True
    # Knob values the initial policy's mean sits on instead of the scenario's (the others keep it).
    start_knobs: Mapping[str, float] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        EnvConfig.from_dict(self.env)
        if self.n_envs < 1 or self.n_timesteps < 1 or self.save_every_steps < 1:
            raise ValueError("n_envs, n_timesteps and save_every_steps must be >= 1")
        if self.policy != "MlpPolicy":
            raise ValueError(
                f"policy: only MlpPolicy is supported (the export needs it), not {self.policy!r}"
            )
        if not 0 <= self.seed < 900_000:
            raise ValueError("seed: must be in [0, 900000), below the validation and test seeds")
        accepted = set(inspect.signature(_ppo_init()).parameters) - set(RESERVED_PPO_ARGS)
        unknown = sorted(set(self.ppo) - accepted)
        if unknown:
            raise ValueError(f"{unknown}: not arguments of stable_baselines3.PPO")
        unknown = sorted(set(self.normalize) - set(VECNORMALIZE_ARGS))
        if unknown:
            raise ValueError(f"normalize: unknown VecNormalize argument(s) {unknown}")
        self._check_start_knobs()

    def _check_start_knobs(self) -> None:
        if not isinstance(self.start_knobs, Mapping):
            raise ValueError("start_knobs: needs a mapping of knob name to value")
        if self.start_knobs and not self.start_at_defaults:
            raise ValueError("start_knobs: needs start_at_defaults: true (they replace some defaults)")
        for name, value in self.start_knobs.items():
            if name not in ALL_KNOBS + LEVERS:
                raise ValueError(f"start_knobs.{name}: not a knob ({', '.join(ALL_KNOBS + LEVERS)})")
            check_knob_value(f"start_knobs.{name}", value)

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with command-line overrides (None leaves a field as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_learning_rate(self, learning_rate: float | None) -> TrainConfig:
        """A copy with PPO's learning rate set (None leaves it as it is)."""
        if learning_rate is None:
            return self
        return dataclasses.replace(self, ppo={**self.ppo, "learning_rate": learning_rate})

    def with_validation_seeds(self, num_seeds: int | None) -> TrainConfig:
        """A copy validating on `num_seeds` seeds (None leaves it as it is)."""
        if num_seeds is None:
            return self
        return dataclasses.replace(self, eval=dataclasses.replace(self.eval, num_validation_seeds=num_seeds))

    def env_config(self) -> EnvConfig:
        return EnvConfig.from_dict(self.env)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resolved configuration in the file's own format (saved with every checkpoint)."""
        zoo = {
            "n_envs": self.n_envs,
            "n_timesteps": self.n_timesteps,
            "policy": self.policy,
            "normalize": repr(dict(self.normalize)),
            "env_kwargs": _plain(self.env),
            **_plain(self.ppo),
        }
        evaluation = _plain(dataclasses.asdict(self.eval))
        ours = {
            "seed": self.seed,
            "save_every_steps": self.save_every_steps,
            "start_at_defaults": self.start_at_defaults,
            "start_knobs": _plain(self.start_knobs),
            "eval": evaluation,
        }
        return {ENV_ID: zoo, OURS: ours}


def _ppo_init() -> Callable[..., None]:
    from stable_baselines3 import PPO

    return PPO.__init__


def _plain(value: Any) -> Any:
    """YAML-safe plain values (tuples become lists, mappings dicts)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def load_train_config(path: Path | str | None = None) -> TrainConfig:
    """Read a training file (default: the packaged `training/configs/ppo.yaml`).

    Raises:
        UserError: a missing file, bad YAML, or a field that breaks a rule; the message names the
            file and the field.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"{path}: no such training config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, Mapping) or ENV_ID not in data:
        raise UserError(f"{path}: needs a top-level '{ENV_ID}' section (RL Zoo's format)")
    unknown = sorted(set(data) - {ENV_ID, OURS})
    if unknown:
        raise UserError(f"{path}: unknown top-level section(s) {unknown} (known: '{ENV_ID}', '{OURS}')")
    try:
        return _from_sections(dict(data[ENV_ID] or {}), dict(data.get(OURS) or {}))
    except (ValueError, TypeError, SyntaxError) as error:
        raise UserError(f"{path}: {error}") from None


def _from_sections(zoo: dict[str, Any], ours: dict[str, Any]) -> TrainConfig:
    values: dict[str, Any] = {"env": dict(zoo.pop("env_kwargs", None) or {})}
    for key in ("n_envs", "n_timesteps"):
        if key in zoo:
            values[key] = int(zoo.pop(key))
    values["policy"] = zoo.pop("policy", "MlpPolicy")
    if "normalize" in zoo:
        values["normalize"] = _normalize_kwargs(zoo.pop("normalize"))
    if isinstance(zoo.get("policy_kwargs"), str):
        zoo["policy_kwargs"] = _literal("policy_kwargs", zoo["policy_kwargs"])
    values["ppo"] = zoo
    known = ("seed", "save_every_steps", "start_at_defaults", "start_knobs", "eval")
    unknown = sorted(set(ours) - set(known))
    if unknown:
        raise ValueError(f"{OURS}: unknown field(s) {unknown} (known: {', '.join(known)})")
    values.update({k: ours[k] for k in known[:-1] if k in ours})
    values["eval"] = _eval_config(ours.get("eval") or {})
    return TrainConfig(**values)


def _eval_config(data: Mapping[str, Any]) -> EvalConfig:
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{OURS}.eval: unknown field(s) {unknown} (known: {sorted(known)})")
    values = dict(data)
    for key in ("scenarios", "test_policies"):
        if key in values:
            values[key] = tuple(values[key])
    if "knee_bands" in values:
        values["knee_bands"] = {k: tuple(v) for k, v in dict(values["knee_bands"]).items()}
    return EvalConfig(**values)


def _normalize_kwargs(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"norm_obs": value, "norm_reward": value}
    parsed = _literal("normalize", value) if isinstance(value, str) else value
    if not isinstance(parsed, Mapping):
        raise ValueError(f"normalize: expected a bool or a dict of VecNormalize arguments, got {value!r}")
    return dict(parsed)


def _literal(key: str, text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(
            f"{key}: {text!r} is not a Python literal (RL Zoo's eval'd code is not read)"
        ) from None
