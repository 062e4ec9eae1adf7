"""Dynamo's router knobs, defined once for the simulator, the environment, the live knob router,
the sidecar, the exporters and the cross-check.

- **Names per release.** Dynamo 1.6.1 takes three knobs per request (`router_config_override`):
  `overlap_score_credit`, `prefill_load_scale`, `router_temperature`. Dynamo v0.9 (the paper's
  release) takes two: `overlap_score_weight`, `router_temperature`.
- **Rules.** Every knob is finite and >= 0, as Dynamo's override takes it.
- **The override merge** (`apply_override`, `merge_override`): Dynamo 1.6.1's. Unset fields keep
  the router's value; the v0.9 name `overlap_score_weight` sets `prefill_load_scale`, and a weight
  of 0 also turns the overlap credit off. Each release's frontend forces its own override on the
  decode stage (`DECODE_OVERRIDES`).
- **The action mapping.** An action is a vector in [-1, 1]^k; knob i takes
  `low_i + (a_i + 1) / 2 * (high_i - low_i)` over its `KnobRange`.
- **Levers** (`LEVERS`): actions beyond the router's per-request knobs, mapped the same way but
  applied by the environment on their own cadence: `num_prefill_workers` splits a fixed budget of
  workers between the prefill and decode pools (Dynamo's Planner's move, `envs.sim.scaling`);
  `active_prefill_tokens_threshold_frac` is the frontend's busy threshold (`envs.sim.busy`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from numbers import Real
from typing import Any

import numpy as np

from envs.sim.config import RouterConfig

Override = Mapping[str, float | bool | None]

# The per-request knobs of each release (`RouterConfig.router_semantics`), in the action's order.
RELEASE_KNOBS: dict[str, tuple[str, ...]] = {
    "dynamo-1.6": ("overlap_score_credit", "prefill_load_scale", "router_temperature"),
    "dynamo-0.9": ("overlap_score_weight", "router_temperature"),
}
# Every knob of either release, in the order reports list them.
ALL_KNOBS: tuple[str, ...] = (
    "overlap_score_credit",
    "prefill_load_scale",
    "overlap_score_weight",
    "router_temperature",
)
# Actions that are not router knobs: the environment applies them itself (see the docstring).
LEVERS: tuple[str, ...] = ("num_prefill_workers", "active_prefill_tokens_threshold_frac")
# What v0.9's weight is in 1.6.1's formula.
V09_TO_V16_NAMES: dict[str, str] = {"overlap_score_weight": "prefill_load_scale"}
# The fields of `router_config_override` each release accepts: 1.6.1's also takes the v0.9 name
# and two booleans; v0.9's RouterConfigOverride had two fields.
OVERRIDE_FIELDS: dict[str, frozenset[str]] = {
    "dynamo-1.6": frozenset({*ALL_KNOBS, "assume_kv_reuse", "track_prefill_tokens"}),
    "dynamo-0.9": frozenset(RELEASE_KNOBS["dynamo-0.9"]),
}
# The decode stage's forced override in each release's frontend: 1.6.1 makes it load-only;
# v0.9 zeroed only the weight, so prefix blocks booked on a decode worker still count once.
DECODE_OVERRIDES: dict[str, dict[str, float | bool | None]] = {
    "dynamo-1.6": {"overlap_score_credit": 0.0, "assume_kv_reuse": False, "track_prefill_tokens": False},
    "dynamo-0.9": {"overlap_score_weight": 0.0},
}
# The action's ranges. Dynamo 1.6.1 accepts any finite credit and scale >= 0. The upper ends are
# wide because the best fixed settings of the multi-turn presets lie past 2 (scripts/
# knob_landscape.py: on 3P/3D the reward still improves from credit 4 to 8 at 250+ clients; on
# agg8, from scale 4 to 8), and a range that stops at 2 caps the policy and best-static alike at a
# corner. v0.9's weight keeps the paper's [0, 2].
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "overlap_score_credit": (0.0, 8.0),
    "prefill_load_scale": (0.0, 8.0),
    "overlap_score_weight": (0.0, 2.0),
    "router_temperature": (0.0, 1.0),
}


@dataclass(frozen=True, slots=True)
class Knobs:
    """The knobs one request is routed with, after per-request overrides."""

    overlap_score_credit: float = 1.0
    prefill_load_scale: float = 1.0
    router_temperature: float = 0.0
    assume_kv_reuse: bool = True
    track_prefill_tokens: bool = True

    @classmethod
    def from_config(cls, config: RouterConfig) -> Knobs:
        knobs = cls(
            config.overlap_score_credit,
            config.prefill_load_scale,
            config.router_temperature,
            config.assume_kv_reuse,
            config.track_prefill_tokens,
        )
        return apply_override(knobs, {"overlap_score_weight": config.overlap_score_weight})


def check_knob_value(name: str, value: Any) -> float:
    """A knob value by Dynamo's rule for an override: a finite number >= 0.

    Raises:
        ValueError: naming the knob and the value.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


def check_knob_values(values: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    """Values for some of `names`, each by `check_knob_value`.

    Raises:
        ValueError: a name outside `names`, or a value that breaks the rule.
    """
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; known: {', '.join(names)}")
    return {name: check_knob_value(name, value) for name, value in values.items()}


def apply_override(knobs: Knobs, override: Override | None) -> Knobs:
    """Apply a `router_config_override` as Dynamo 1.6.1 does (see the module docstring).

    Raises:
        ValueError: an unknown field, or a knob that is not finite and >= 0.
    """
    if not override:
        return knobs
    unknown = set(override) - OVERRIDE_FIELDS["dynamo-1.6"]
    if unknown:
        raise ValueError(f"router_config_override: unknown field(s) {sorted(unknown)}")
    fields = {k: v for k, v in override.items() if v is not None and k != "overlap_score_weight"}
    try:
        for name in ALL_KNOBS:
            if override.get(name) is not None:
                check_knob_value(name, override[name])
    except ValueError as error:
        raise ValueError(f"router_config_override: {error}") from None
    weight = override.get("overlap_score_weight")
    if weight is not None:
        fields[V09_TO_V16_NAMES["overlap_score_weight"]] = weight
        if weight == 0:
            fields["overlap_score_credit"] = 0.0
    return replace(knobs, **fields) if fields else knobs


def merge_override(router: RouterConfig, override: Override | None) -> Knobs:
    """The router's own knobs with a per-request override in force, under the router's release.

    Raises:
        ValueError: a field the release does not take per request, or a rule `apply_override` checks.
    """
    release = router.router_semantics
    if override and release == "dynamo-0.9":
        unknown = set(override) - OVERRIDE_FIELDS[release]
        if unknown:
            raise ValueError(
                f"router_config_override: Dynamo v0.9 takes only {sorted(OVERRIDE_FIELDS[release])}, "
                f"not {sorted(unknown)}"
            )
    return apply_override(Knobs.from_config(router), override)


class DecodeStageKnobs:
    """The knobs the decode stage routes a request with: those in force at its arrival, with the
    release's forced decode override (`DECODE_OVERRIDES`; with conditional disaggregation on,
    Dynamo 1.6.1 keeps the overlap credit). Remembered for the last arrival knobs seen: they
    change once per control interval, requests hand off thousands of times."""

    def __init__(self, router: RouterConfig) -> None:
        forced = DECODE_OVERRIDES[router.router_semantics]
        if router.conditional_disagg is not None:
            forced = {k: v for k, v in forced.items() if k != "overlap_score_credit"}
        self._forced = forced
        self._for: Knobs | None = None
        self._value: Knobs | None = None

    def __call__(self, arrival_knobs: Knobs) -> Knobs:
        if arrival_knobs is not self._for or self._value is None:
            self._value = apply_override(arrival_knobs, self._forced)
            self._for = arrival_knobs
        return self._value


def knob_values(router: RouterConfig, names: Sequence[str] = ALL_KNOBS) -> dict[str, float]:
    """The router's own value of each named knob (v0.9's weight reads 1.6.1's scale)."""
    knobs = Knobs.from_config(router)
    return {name: getattr(knobs, V09_TO_V16_NAMES.get(name, name)) for name in names}


def kv_router_config_kwargs(router: RouterConfig) -> dict[str, Any]:
    """The router's startup knobs as `dynamo.llm.KvRouterConfig` keyword arguments."""
    kwargs: dict[str, Any] = {
        "overlap_score_credit": router.overlap_score_credit,
        "overlap_score_credit_decay": router.overlap_score_credit_decay,
        "prefill_load_scale": router.prefill_load_scale,
        "decode_active_request_weight": router.decode_active_request_weight,
        "router_temperature": router.router_temperature,
        "router_assume_kv_reuse": router.assume_kv_reuse,
        "router_track_prefill_tokens": router.track_prefill_tokens,
        "router_track_active_blocks": router.track_active_blocks,
    }
    if router.overlap_score_weight is not None:
        kwargs["overlap_score_weight"] = router.overlap_score_weight
    if router.router_queue_threshold is not None:
        kwargs["router_queue_threshold"] = router.router_queue_threshold
        kwargs["router_queue_policy"] = router.router_queue_policy
    cond = router.conditional_disagg
    if cond is not None:  # KvRouterConfig's flat names (its replay does not act on them)
        kwargs["conditional_disagg_enabled"] = True
        kwargs.update({f"conditional_disagg_{k}": v for k, v in asdict(cond).items()})
    return kwargs


# -- the action mapping ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnobRange:
    """One knob the agent sets, and the range the action interval [-1, 1] maps onto."""

    name: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.name not in ALL_KNOBS + LEVERS:
            raise ValueError(
                f"knob {self.name!r} is neither a per-request knob ({', '.join(ALL_KNOBS)}) "
                f"nor a lever ({', '.join(LEVERS)})"
            )
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 <= self.low < self.high):
            raise ValueError(f"knob {self.name}: need 0 <= low < high, got [{self.low}, {self.high}]")


def default_knobs(router: RouterConfig) -> tuple[KnobRange, ...]:
    """The router release's per-request knobs over their default ranges."""
    return tuple(KnobRange(name, *DEFAULT_RANGES[name]) for name in RELEASE_KNOBS[router.router_semantics])


def check_knobs(knobs: Sequence[KnobRange], router: RouterConfig) -> None:
    """Reject a knob set the scenario's router release cannot take per request (levers are the
    environment's to check against the deployment)."""
    allowed = (*RELEASE_KNOBS[router.router_semantics], *LEVERS)
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


def split_levers(values: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(the router override, the lever values) of an action's knob values."""
    override = {name: value for name, value in values.items() if name not in LEVERS}
    return override, {name: value for name, value in values.items() if name in LEVERS}


def override_to_action(values: Mapping[str, float], knobs: Sequence[KnobRange]) -> np.ndarray:
    """The action that sets these knob values (clipped into the ranges)."""
    action = [2.0 * (values[k.name] - k.low) / (k.high - k.low) - 1.0 for k in knobs]
    return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
