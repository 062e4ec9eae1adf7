"""Episode load schedules: closed-loop concurrency over time, one level per control interval.

Kinds (levels `low` and `high` are client counts; the paper presets' knee is near C = 128):
- `constant`: `high` throughout.
- `ramp`: geometric from `low` to `high` over the episode (a log-spaced sweep, like the paper's
  grid, crossing the knee once).
- `step`: `low`, then `high` from `at_fraction` of the episode on.
- `burst`: `low`, with bursts to `high` lasting `burst_intervals`, every `period_intervals`.
- `diurnal`: a sine between `low` and `high` with period `period_intervals` (geometric, so equal
  time is spent on either side of the geometric mean).

With `jitter > 0`, each reset scales both levels by a factor drawn log-uniformly in
[1/(1+jitter), 1+jitter] (domain randomisation of the operating point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ScheduleKind = Literal["constant", "ramp", "step", "burst", "diurnal"]
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "ramp", "step", "burst", "diurnal")


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """One load schedule; validated on construction."""

    kind: ScheduleKind = "ramp"
    low: int = 32
    high: int = 512
    at_fraction: float = 0.5
    period_intervals: int = 24
    burst_intervals: int = 4
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {', '.join(SCHEDULE_KINDS)}, got {self.kind!r}")
        if not 1 <= self.low <= self.high:
            raise ValueError(f"schedule needs 1 <= low <= high, got low={self.low}, high={self.high}")
        if not 0 <= self.at_fraction <= 1:
            raise ValueError(f"schedule at_fraction must be in [0, 1], got {self.at_fraction}")
        if self.period_intervals < 1 or not 1 <= self.burst_intervals <= self.period_intervals:
            raise ValueError("schedule needs 1 <= burst_intervals <= period_intervals")
        if not 0 <= self.jitter < 10:
            raise ValueError(f"schedule jitter must be in [0, 10), got {self.jitter}")


def concurrency_levels(
    config: ScheduleConfig, num_intervals: int, rng: np.random.Generator | None = None
) -> list[int]:
    """The client count in force during each control interval."""
    scale = 1.0
    if config.jitter > 0:
        if rng is None:
            raise ValueError("a schedule with jitter needs an rng")
        spread = math.log1p(config.jitter)
        scale = math.exp(rng.uniform(-spread, spread))
    low, high = config.low * scale, config.high * scale
    steps = range(num_intervals)
    if config.kind == "constant":
        levels = [high for _ in steps]
    elif config.kind == "ramp":
        denominator = max(num_intervals - 1, 1)
        levels = [low * (high / low) ** (i / denominator) for i in steps]
    elif config.kind == "step":
        switch = round(config.at_fraction * num_intervals)
        levels = [low if i < switch else high for i in steps]
    elif config.kind == "burst":
        levels = [high if i % config.period_intervals < config.burst_intervals else low for i in steps]
    else:
        mid, amplitude = math.sqrt(low * high), math.log(high / low) / 2
        levels = [
            mid * math.exp(-amplitude * math.cos(2 * math.pi * i / config.period_intervals)) for i in steps
        ]
    return [max(1, round(level)) for level in levels]
