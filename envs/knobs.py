"""The action space's knobs: which router knobs an action sets, and over which ranges.

An action is a vector in [-1, 1]^k; knob i takes `low_i + (a_i + 1) / 2 * (high_i - low_i)`.
Defaults follow the router semantics of the scenario: Dynamo 1.6.1's per-request knobs, or
Dynamo v0.9's two (`overlap_score_weight`, `router_temperature`) for the paper presets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs.sim.config import RouterConfig
from envs.sim.router import Knobs

_V16_KNOBS = ("overlap_score_credit", "prefill_load_scale", "router_temperature")
_V09_KNOBS = ("overlap_score_weight", "router_temperature")


@dataclass(frozen=True, slots=True)
class KnobRange:
    """One knob the agent sets, and the range the action interval [-1, 1] maps onto."""

    name: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.name not in _V16_KNOBS + _V09_KNOBS:
            raise ValueError(
                f"knob {self.name!r} is not a per-request knob ({', '.join(_V16_KNOBS + _V09_KNOBS)})"
            )
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 <= self.low < self.high):
            raise ValueError(f"knob {self.name}: need 0 <= low < high, got [{self.low}, {self.high}]")


# Dynamo 1.6.1 accepts any finite credit and scale >= 0. The upper ends are wide because the best
# fixed settings of the multi-turn presets lie past 2 (scripts/knob_landscape.py: on 3P/3D the
# reward still improves from credit 4 to 8 at 250+ clients; on agg8, from scale 4 to 8), and a
# range that stops at 2 caps the policy and best-static alike at a corner. v0.9's weight keeps the
# paper's [0, 2].
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "overlap_score_credit": (0.0, 8.0),
    "prefill_load_scale": (0.0, 8.0),
    "overlap_score_weight": (0.0, 2.0),
    "router_temperature": (0.0, 1.0),
}


def default_knobs(router: RouterConfig) -> tuple[KnobRange, ...]:
    names = _V09_KNOBS if router.router_semantics == "dynamo-0.9" else _V16_KNOBS
    return tuple(KnobRange(name, *DEFAULT_RANGES[name]) for name in names)


def check_knobs(knobs: Sequence[KnobRange], router: RouterConfig) -> None:
    """Reject a knob set the scenario's router release cannot take per request."""
    allowed = _V09_KNOBS if router.router_semantics == "dynamo-0.9" else _V16_KNOBS
    names = [k.name for k in knobs]
    bad = [name for name in names if name not in allowed]
    if bad or len(set(names)) != len(names):
        raise ValueError(
            f"knobs {names}: router_semantics {router.router_semantics} takes each of "
            f"{', '.join(allowed)} at most once"
        )


def action_to_override(action: np.ndarray, knobs: Sequence[KnobRange]) -> dict[str, float]:
    """The `router_config_override` an action stands for (clipped to [-1, 1] first)."""
    clipped = np.clip(np.asarray(action, dtype=float).reshape(-1), -1.0, 1.0)
    if clipped.shape[0] != len(knobs):
        raise ValueError(f"action has {clipped.shape[0]} entries for {len(knobs)} knobs")
    return {k.name: k.low + (a + 1.0) / 2.0 * (k.high - k.low) for k, a in zip(knobs, clipped, strict=True)}


def override_to_action(values: dict[str, float], knobs: Sequence[KnobRange]) -> np.ndarray:
    """The action that sets these knob values (clipped into the ranges)."""
    action = [2.0 * (values[k.name] - k.low) / (k.high - k.low) - 1.0 for k in knobs]
    return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


def router_values(router: RouterConfig) -> dict[str, float]:
    """The scenario router's own knob values, by knob name (both releases' names)."""
    knobs = Knobs.from_config(router)
    return {
        "overlap_score_credit": knobs.overlap_score_credit,
        "prefill_load_scale": knobs.prefill_load_scale,
        "overlap_score_weight": knobs.prefill_load_scale,
        "router_temperature": knobs.router_temperature,
    }
