"""What every policy shares: SB3's `predict` signature and the context that maps knobs to actions.

A policy sees only the observation vector (`envs.observation`, schema v1), so the same object runs
in the simulator, against a live deployment and in the router sidecar. It reads features by name
through `PolicyContext`, and it states its decisions as knob values, which the context turns into
the action in [-1, 1]^k that the environment expects.

`predict` takes one observation `(n,)` or a batch `(num_envs, n)` as SB3's `VecEnv` gives it, and
returns actions of the same batch shape. Stateful policies keep one state per environment of the
batch and restart it where `episode_start` is true (SB3's convention), so SB3's
`evaluate_policy` runs them unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from envs.observation import FEATURES
from envs.sim.knobs import KnobRange, override_to_action


class Policy(Protocol):
    """Stable-Baselines3's inference interface; `state` is returned unchanged (None) by the
    policies here, as they keep their own per-environment state."""

    name: str

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]: ...


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """The knobs an action sets, the observation's feature names, and the scenario's own knob
    values (what a knob the policy does not mention is held at)."""

    knobs: tuple[KnobRange, ...]
    feature_names: tuple[str, ...]
    default_values: Mapping[str, float]

    def __post_init__(self) -> None:
        missing = [k.name for k in self.knobs if k.name not in self.default_values]
        if missing:
            raise ValueError(f"PolicyContext: no default value for knob(s) {missing}")
        absent = [name for name in FEATURES if name not in self.feature_names]
        if absent:
            raise ValueError(f"PolicyContext: the observation lacks schema-v1 features {absent}")

    @classmethod
    def from_env(cls, env: Any) -> PolicyContext:
        """From a `DisaggRoutingEnv` (or a wrapper of one)."""
        base = env.unwrapped
        return cls(tuple(base.knobs), base.obs_config.feature_names, base.default_values)

    @property
    def knob_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def action_for(self, values: Mapping[str, float]) -> np.ndarray:
        """The action that sets these knob values; knobs not named keep the scenario's values.

        Raises:
            ValueError: a knob the action space does not have.
        """
        unknown = sorted(set(values) - set(self.knob_names))
        if unknown:
            raise ValueError(f"knob(s) {unknown} are not in the action space {list(self.knob_names)}")
        full = {name: float(values.get(name, self.default_values[name])) for name in self.knob_names}
        return override_to_action(full, self.knobs)

    def index(self, feature: str) -> int:
        try:
            return self.feature_names.index(feature)
        except ValueError:
            raise KeyError(f"no observation feature {feature!r}") from None


def as_batch(observation: np.ndarray, num_features: int) -> tuple[np.ndarray, bool]:
    """The observation as a 2-D batch, and whether it came as a single vector."""
    array = np.asarray(observation, dtype=np.float64)
    single = array.ndim == 1
    batch = array.reshape(1, -1) if single else array
    if batch.ndim != 2 or batch.shape[1] != num_features:
        raise ValueError(f"observation shape {array.shape} does not match {num_features} features")
    return batch, single


def episode_starts(episode_start: Sequence[bool] | np.ndarray | None, num_envs: int) -> np.ndarray:
    if episode_start is None:
        return np.zeros(num_envs, dtype=bool)
    starts = np.asarray(episode_start, dtype=bool).reshape(-1)
    if starts.shape[0] != num_envs:
        raise ValueError(f"episode_start has {starts.shape[0]} entries for {num_envs} observations")
    return starts


@dataclass(frozen=True, slots=True)
class StaticPolicy:
    """The same knob values every interval (Dynamo's defaults, or any vector)."""

    name: str
    context: PolicyContext
    values: Mapping[str, float]

    def __post_init__(self) -> None:
        self.context.action_for(self.values)  # fails now on a knob outside the action space

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        batch, single = as_batch(observation, len(self.context.feature_names))
        action = self.context.action_for(self.values)
        actions = np.tile(action, (batch.shape[0], 1))
        return (actions[0] if single else actions), state
