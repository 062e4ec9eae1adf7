"""Engine pass timing: the mocker's polynomial and interpolation from a profile.

Both models answer the two questions the engine loop asks each pass: how long the prefill part
takes for T uncached tokens, and how long one decode step takes at a given KV-cache occupancy.
Durations are in milliseconds of simulated time, before the speedup ratio is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from envs.sim.config import TimingConfig


class TimingModel(Protocol):
    """What the engine loop needs from a timing model."""

    def prefill_ms(self, num_new_tokens: int) -> float: ...

    def decode_ms(self, active_kv_tokens: int, capacity_tokens: int, mean_context_tokens: float) -> float: ...


@dataclass(frozen=True, slots=True)
class PolynomialTiming:
    """The mocker's default ("hardcoded polynomials", aisimulate `perf_model.rs`).

    prefill_ms(T) = 4.209989e-7 T^2 + 1.518344e-2 T + 16.50142 for T uncached tokens, 0 for T = 0;
    decode_ms(u) = max(1, -25.74 u^2 + 54.01 u + 5.74) with u the KV occupancy in [0, 1].
    """

    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0

    def prefill_ms(self, num_new_tokens: int) -> float:
        if num_new_tokens <= 0:
            return 0.0
        t = float(num_new_tokens)
        return (4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142) / self.speedup_ratio

    def decode_ms(self, active_kv_tokens: int, capacity_tokens: int, mean_context_tokens: float) -> float:
        u = min(1.0, active_kv_tokens / capacity_tokens)
        raw = max(1.0, -25.74 * u * u + 54.01 * u + 5.74)
        return raw / (self.speedup_ratio * self.decode_speedup_ratio)


@dataclass(frozen=True, slots=True)
class ProfileArrays:
    """A mocker-format profile (the keys `dynamo.mocker --planner-profile-data` reads).

    prefill_isl [n], prefill_ttft_ms [n]: prefill time by input length.
    decode_active_kv_tokens [a], decode_context_length [c], decode_itl [a, c] (or [c, a] as
    stored by the profiler, see `from_npz_dict`): one decode step by KV load and context.
    """

    prefill_isl: np.ndarray
    prefill_ttft_ms: np.ndarray
    decode_active_kv_tokens: np.ndarray
    decode_context_length: np.ndarray
    decode_itl: np.ndarray

    def __post_init__(self) -> None:
        for name in ("prefill_isl", "decode_active_kv_tokens", "decode_context_length"):
            axis = getattr(self, name)
            if axis.ndim != 1 or len(axis) < 2 or np.any(np.diff(axis) <= 0):
                raise ValueError(f"{name} must be a strictly increasing 1-D array of >= 2 points")
        if self.prefill_ttft_ms.shape != self.prefill_isl.shape:
            raise ValueError("prefill_ttft_ms must have the shape of prefill_isl")
        want = (len(self.decode_active_kv_tokens), len(self.decode_context_length))
        if self.decode_itl.shape != want:
            raise ValueError(f"decode_itl must have shape {want}, got {self.decode_itl.shape}")


@dataclass(frozen=True, slots=True)
class ProfileTiming:
    """Interpolates a profile as the mocker does: prefill by 1-D linear interpolation with linear
    extrapolation past the ends; decode by bilinear interpolation over (active KV tokens, context
    length), clamped to the grid."""

    arrays: ProfileArrays
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0

    def prefill_ms(self, num_new_tokens: int) -> float:
        if num_new_tokens <= 0:
            return 0.0
        x, y = self.arrays.prefill_isl, self.arrays.prefill_ttft_ms
        t = float(num_new_tokens)
        if t <= x[0]:
            i = 0
        elif t >= x[-1]:
            i = len(x) - 2
        else:
            return float(np.interp(t, x, y)) / self.speedup_ratio
        slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
        return max(0.0, float(y[i] + slope * (t - x[i]))) / self.speedup_ratio

    def decode_ms(self, active_kv_tokens: int, capacity_tokens: int, mean_context_tokens: float) -> float:
        kv_axis, ctx_axis = self.arrays.decode_active_kv_tokens, self.arrays.decode_context_length
        grid = self.arrays.decode_itl
        i, fi = _cell(kv_axis, float(active_kv_tokens))
        j, fj = _cell(ctx_axis, float(mean_context_tokens))
        top = grid[i, j] * (1 - fj) + grid[i, j + 1] * fj
        bottom = grid[i + 1, j] * (1 - fj) + grid[i + 1, j + 1] * fj
        return float(top * (1 - fi) + bottom * fi) / (self.speedup_ratio * self.decode_speedup_ratio)


def _cell(axis: np.ndarray, value: float) -> tuple[int, float]:
    """Index of the grid cell holding `value` (clamped) and the fraction across it."""
    clamped = min(max(value, float(axis[0])), float(axis[-1]))
    i = int(np.searchsorted(axis, clamped, side="right")) - 1
    i = min(max(i, 0), len(axis) - 2)
    return i, (clamped - axis[i]) / (axis[i + 1] - axis[i])


def make_timing(config: TimingConfig, profile: ProfileArrays | None = None) -> TimingModel:
    """The timing model a scenario asks for; a profile's arrays come from the caller."""
    if config.kind == "polynomial":
        return PolynomialTiming(config.speedup_ratio, config.decode_speedup_ratio)
    if profile is None:
        raise ValueError("timing kind 'profile' needs the profile arrays (load them with envs.profiles)")
    return ProfileTiming(profile, config.speedup_ratio, config.decode_speedup_ratio)
