"""What the sidecar runs: a policy, the knobs it sets, the observation it reads, and its files.

`--policy` takes an export folder (or a checkpoint folder holding `export/`, or `ppo:PATH`), or a
named policy: `knee`, `default`, `static:KNOB=V,...`. Exported policies bring their own knobs and
ranges and their observation layout, which must be the builder's (schema v1); the others run on
Dynamo 1.6.1's three per-request knobs over the project's default ranges. A policy is never
unpickled: the export is JSON and ONNX.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.base import Policy, PolicyContext
from agents.onnx_policy import POLICY_JSON, OnnxPolicy, find_export_dir
from envs.errors import UserError
from envs.levers import BUSY_LEVER, BUSY_RANGE
from envs.observation import HISTORY_FEATURES, ObservationConfig
from envs.sim.config import RouterConfig
from envs.sim.knobs import (
    LEVERS,
    RELEASE_KNOBS,
    KnobRange,
    action_to_override,
    check_knob_value,
    default_knobs,
    knob_values,
)

NAMED = ("knee", "default")
# Dynamo 1.6.1's own values of its per-request knobs: the safe setting unless told otherwise.
DYNAMO_DEFAULT_KNOBS: dict[str, float] = knob_values(RouterConfig(), RELEASE_KNOBS["dynamo-1.6"])
# The safe setting of every knob the sidecar can set: the busy lever's is the top of its range,
# no shedding (Dynamo's default).
SAFE_DEFAULTS: dict[str, float] = DYNAMO_DEFAULT_KNOBS | {BUSY_LEVER: BUSY_RANGE[1]}


class PolicyLoadError(UserError, ValueError):
    """A policy the sidecar cannot run; the message names the file or spec and the rule."""


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A policy ready to decide: SB3's `predict`, the context mapping actions to knob values, the
    observation layout, and the files whose change means a new policy (exports only)."""

    name: str
    policy: Policy
    context: PolicyContext
    observation: ObservationConfig
    files: tuple[Path, ...] = ()

    def knobs_for(self, action: np.ndarray) -> dict[str, float]:
        return action_to_override(action, self.context.knobs)

    def action_for(self, knobs: Mapping[str, float]) -> np.ndarray:
        return self.context.action_for(knobs)

    def files_signature(self) -> tuple[tuple[int, int], ...]:
        """(mtime_ns, size) of each file; a change means the policy was replaced on disk."""
        return tuple(_stat(path) for path in self.files)


def load_policy(
    spec: str,
    safe_knobs: Mapping[str, float],
    lever_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> LoadedPolicy:
    """The policy `spec` names, holding any knob it does not set at `safe_knobs`; a `static:`
    policy of levers alone gets the ranges in `lever_ranges` (the deployment's; the busy lever's
    is fixed) and must hold its values inside them.

    Raises:
        PolicyLoadError: an unknown name, a folder without an export, a malformed export, or an
            export whose knobs or observation the sidecar cannot give it.
    """
    spec = spec.strip()
    if spec in NAMED or spec.startswith("static:"):
        return _named(spec, safe_knobs, {BUSY_LEVER: BUSY_RANGE, **(lever_ranges or {})})
    return _exported(spec.removeprefix("ppo:"), safe_knobs)


def _named(
    spec: str, safe_knobs: Mapping[str, float], lever_ranges: Mapping[str, tuple[float, float]]
) -> LoadedPolicy:
    from agents.policy_spec import PolicySpecError
    from agents.registry import resolve

    knobs = default_knobs(RouterConfig())
    levers = [name for name in LEVERS if name in spec]
    if spec.startswith("static:") and levers:
        # Fixed levers alone: they need no knob router.
        missing = [name for name in levers if name not in lever_ranges]
        if missing:
            raise PolicyLoadError(
                f"--policy {spec}: {missing[0]} moves workers of a local deployment started with "
                "`poa-gym dynamo up --split-workers` and scaling.max_workers (--workdir)"
            )
        knobs = tuple(KnobRange(name, *lever_ranges[name]) for name in levers)
    observation = ObservationConfig(tuple(k.name for k in knobs))
    context = _context(knobs, observation, safe_knobs)
    try:
        policy = resolve(spec).build(context)
    except (PolicySpecError, ValueError) as error:
        raise PolicyLoadError(f"--policy {spec}: {error}") from None
    _check_static_levers(spec, getattr(policy, "values", {}), knobs)
    return LoadedPolicy(spec, policy, context, observation)


def _check_static_levers(spec: str, values: Mapping[str, float], knobs: tuple[KnobRange, ...]) -> None:
    """A fixed lever value outside its range is refused, not clipped: it names a pool size or a
    threshold the deployment would not get."""
    for knob in knobs:
        value = values.get(knob.name)
        if knob.name in LEVERS and value is not None and not knob.low <= value <= knob.high:
            pd = knob.name == "num_prefill_workers"
            why = " (scaling.max_workers less one decode worker)" if pd else ""
            raise PolicyLoadError(
                f"--policy {spec}: {knob.name}={value:g} must lie in [{knob.low:g}, {knob.high:g}]{why}"
            )


def _exported(path: str, safe_knobs: Mapping[str, float]) -> LoadedPolicy:
    folder = find_export_dir(path)
    if folder is None:
        raise PolicyLoadError(
            f"--policy {path}: no {POLICY_JSON} there or in export/ (a folder from `poa-gym export`, "
            f"or one of: {', '.join(NAMED)}, static:KNOB=V,...)"
        )
    try:
        policy = OnnxPolicy.load(folder, name=f"ppo:{path}")
    except (OSError, ValueError) as error:
        raise PolicyLoadError(str(error)) from None
    knobs = tuple(KnobRange(k.name, k.low, k.high) for k in policy.knobs)
    num_history = sum(name.startswith("hist") for name in policy.feature_names)
    observation = ObservationConfig(
        tuple(k.name for k in knobs), history_len=num_history // len(HISTORY_FEATURES)
    )
    try:
        policy.check_matches(knobs, observation.feature_names)
    except ValueError as error:
        raise PolicyLoadError(f"{folder / POLICY_JSON}: {error}") from None
    context = _context(knobs, observation, safe_knobs)
    return LoadedPolicy(policy.name, policy, context, observation, policy.files)


def _context(
    knobs: tuple[KnobRange, ...], observation: ObservationConfig, safe_knobs: Mapping[str, float]
) -> PolicyContext:
    missing = [k.name for k in knobs if k.name not in safe_knobs]
    if missing:
        raise PolicyLoadError(f"--safe: no value for knob(s) {missing} the policy sets")
    return PolicyContext(knobs, observation.feature_names, dict(safe_knobs))


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return (-1, -1)
    return (info.st_mtime_ns, info.st_size)


def parse_knob_values(text: str, field: str) -> dict[str, float]:
    """`KNOB=V,KNOB=V` as knob values (finite, >= 0: Dynamo's rule for an override)."""
    values: dict[str, float] = {}
    for token in filter(None, (t.strip() for t in text.split(","))):
        name, sep, raw = (part.strip() for part in token.partition("="))
        if not sep or name not in SAFE_DEFAULTS:
            raise PolicyLoadError(
                f"{field}: expected KNOB=VALUE with KNOB one of {', '.join(SAFE_DEFAULTS)}, got {token!r}"
            )
        try:
            values[name] = check_knob_value(name, float(raw))
        except ValueError:
            raise PolicyLoadError(f"{field}: {name} must be finite and >= 0, got {raw!r}") from None
    return values
