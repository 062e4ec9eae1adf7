"""The environment's configuration: everything an episode depends on, validated on construction,
and built from plain values (YAML, RLlib's env_config) by `EnvConfig.from_dict`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from envs.live.backend import LiveConfig
from envs.reward import RewardConfig
from envs.schedules import ScheduleConfig
from envs.sim.knobs import KnobRange


@dataclass(frozen=True, slots=True)
class EnvConfig:
    """Everything an episode depends on; validated on construction."""

    scenarios: tuple[str, ...] = ("llama70b-b200-1p5d",)
    schedules: tuple[ScheduleConfig, ...] = (ScheduleConfig(),)
    interval_s: float = 5.0
    num_intervals: int = 60
    warmup_s: float = 10.0
    knobs: tuple[KnobRange, ...] | None = None
    history_len: int = 4
    reward: RewardConfig = field(default_factory=RewardConfig)
    overrides: tuple[str, ...] = ()
    backend: str = "sim"  # "sim", or "dynamo": a live deployment (`live`)
    live: LiveConfig | None = None
    lever_every: int = 6  # intervals between moves of a lever (envs.levers)

    def __post_init__(self) -> None:
        if self.backend not in ("sim", "dynamo"):
            raise ValueError(f"backend: must be 'sim' or 'dynamo', got {self.backend!r}")
        if self.backend == "dynamo" and len(self.scenarios) != 1:
            raise ValueError("backend 'dynamo': a deployment runs one scenario; give exactly one")
        if not self.scenarios or not self.schedules:
            raise ValueError("EnvConfig needs at least one scenario and one schedule")
        if not self.interval_s > 0 or self.num_intervals < 1:
            raise ValueError("EnvConfig needs interval_s > 0 and num_intervals >= 1")
        if not self.warmup_s >= self.interval_s:
            raise ValueError(f"warmup_s ({self.warmup_s}) must cover one interval ({self.interval_s})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvConfig:
        """Build from plain values (YAML, RLlib's env_config); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known - {"scenario", "schedule"}
        if unknown:
            raise ValueError(f"EnvConfig: unknown field(s) {sorted(unknown)} (known: {sorted(known)})")
        values = {k: v for k, v in data.items() if k in known}
        if "scenario" in data:
            values["scenarios"] = (data["scenario"],)
        if "schedule" in data:
            values["schedules"] = (data["schedule"],)
        # Absent fields take the dataclass defaults (with slots, `cls.scenarios` is a descriptor).
        if "scenarios" in values:
            values["scenarios"] = tuple(values["scenarios"])
        if "schedules" in values:
            values["schedules"] = tuple(_schedule(s) for s in values["schedules"])
        if values.get("knobs") is not None:
            values["knobs"] = tuple(k if isinstance(k, KnobRange) else KnobRange(*k) for k in values["knobs"])
        if isinstance(values.get("reward"), Mapping):
            values["reward"] = _build(RewardConfig, values["reward"], "reward")
        values["overrides"] = tuple(values.get("overrides", ()))
        if values.get("backend") == "dynamo" and not isinstance(values.get("live"), LiveConfig):
            values["live"] = _build(LiveConfig, values.get("live") or {}, "live")
        return cls(**values)


def _schedule(value: ScheduleConfig | Mapping[str, Any] | str) -> ScheduleConfig:
    if isinstance(value, ScheduleConfig):
        return value
    if isinstance(value, str):
        return ScheduleConfig(kind=value)  # type: ignore[arg-type]
    return _build(ScheduleConfig, value, "schedule")


Built = TypeVar("Built")


def _build(cls: type[Built], data: Mapping[str, Any], section: str) -> Built:
    """A nested config from plain values; an unknown key is named with the section's known ones
    (Python's own TypeError names neither the section nor the alternatives)."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{section}: unknown field(s) {unknown} (known: {sorted(known)})")
    return cls(**data)
