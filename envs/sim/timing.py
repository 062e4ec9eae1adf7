"""Engine pass timing: the mocker's polynomial and interpolation from a profile.

Both models answer the two questions the engine loop asks each pass: how long the prefill part
takes for T uncached tokens, and how long one decode step takes at a given KV-cache occupancy.
Durations are in milliseconds of simulated time, before the speedup ratio is applied.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from envs.sim.config import TimingConfig
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.profile_catalog import profile_arrays


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
class ProfileTiming:
    """Interpolates a profile as the mocker does (Dynamo `lib/mocker/src/common/perf_model.rs`,
    `PerfModel::from_npz` and `predict_*_time`):

    * prefill: 1-D linear interpolation over the batch's total uncached tokens, extrapolated
      linearly past both ends, floored at 0;
    * decode: bilinear interpolation over (active KV tokens = the sum of the batch's context
      lengths, context length = their integer mean), *extrapolated* from the edge cells past the
      grid (`Bilinear::new().extrapolate(true)`), floored at 1 ms before the speedup.

    Both are asked once per engine pass, so the arrays are also kept as Python lists (numpy's
    per-call overhead on scalars exceeds the arithmetic; float64 arithmetic is the same either
    way), and prefill times are remembered per token count, which repeat pass after pass.
    """

    arrays: ProfileArrays
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0
    _kv_axis: list[float] = field(init=False, repr=False, compare=False)
    _ctx_axis: list[float] = field(init=False, repr=False, compare=False)
    _itl_grid: list[list[float]] = field(init=False, repr=False, compare=False)
    _prefill_memo_ms: dict[int, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen: derived caches are set through object.__setattr__.
        object.__setattr__(self, "_kv_axis", self.arrays.decode_active_kv_tokens.tolist())
        object.__setattr__(self, "_ctx_axis", self.arrays.decode_context_length.tolist())
        object.__setattr__(self, "_itl_grid", self.arrays.decode_itl.tolist())
        object.__setattr__(self, "_prefill_memo_ms", {})

    def prefill_ms(self, num_new_tokens: int) -> float:
        duration_ms = self._prefill_memo_ms.get(num_new_tokens)
        if duration_ms is None:
            duration_ms = self._prefill_memo_ms[num_new_tokens] = self._interpolate_prefill_ms(num_new_tokens)
        return duration_ms

    def _interpolate_prefill_ms(self, num_new_tokens: int) -> float:
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
        grid = self._itl_grid
        i, fi = _cell(self._kv_axis, float(active_kv_tokens))
        # The mocker passes the mean context as an integer (sum // count).
        j, fj = _cell(self._ctx_axis, float(math.floor(mean_context_tokens + 1e-9)))
        row, next_row = grid[i], grid[i + 1]
        top = row[j] * (1 - fj) + row[j + 1] * fj
        bottom = next_row[j] * (1 - fj) + next_row[j + 1] * fj
        raw = max(1.0, top * (1 - fi) + bottom * fi)
        return raw / (self.speedup_ratio * self.decode_speedup_ratio)


def _cell(axis: list[float], value: float) -> tuple[int, float]:
    """Index of the grid cell holding `value` (the edge cell outside the grid) and the fraction
    across it (below 0 or above 1 outside: linear extrapolation)."""
    i = bisect.bisect_right(axis, value) - 1  # numpy.searchsorted(side="right") - 1
    i = min(max(i, 0), len(axis) - 2)
    return i, (value - axis[i]) / (axis[i + 1] - axis[i])


_NOISE_BATCH = 1024  # lognormal factors drawn per numpy call


class NoisyTiming:
    """A timing model whose every answer is scaled by a lognormal factor with mean 1 and
    coefficient of variation `cv`: the pass-to-pass jitter of real GPUs (kernel launch, host
    scheduling), which also keeps closed-loop clients from marching in lockstep waves."""

    __slots__ = ("_factors", "_mu", "_next", "_sigma", "base", "cv", "rng")

    def __init__(self, base: TimingModel, cv: float, rng: np.random.Generator) -> None:
        self.base, self.cv, self.rng = base, cv, rng
        sigma2 = math.log1p(cv * cv)  # computed once: the factor is drawn on every engine pass
        self._mu, self._sigma = -0.5 * sigma2, math.sqrt(sigma2)
        self._factors: list[float] = []
        self._next = 0

    def _factor(self) -> float:
        # Drawn in batches: numpy gives the same numbers as one draw per call (the rng is this
        # model's alone), at a fraction of the per-call cost.
        if self._next == len(self._factors):
            self._factors = self.rng.lognormal(self._mu, self._sigma, _NOISE_BATCH).tolist()
            self._next = 0
        factor = self._factors[self._next]
        self._next += 1
        return factor

    def prefill_ms(self, num_new_tokens: int) -> float:
        return self.base.prefill_ms(num_new_tokens) * self._factor()

    def decode_ms(self, active_kv_tokens: int, capacity_tokens: int, mean_context_tokens: float) -> float:
        return self.base.decode_ms(active_kv_tokens, capacity_tokens, mean_context_tokens) * self._factor()


def make_timing(
    config: TimingConfig,
    profile: ProfileArrays | None = None,
    noise_rng: np.random.Generator | None = None,
) -> TimingModel:
    """The timing model a scenario asks for. A built-in profile (`timing.profile`) is computed
    here from the roofline; a file's arrays (`timing.profile_path`) come from the caller. With
    `timing.step_time_cv > 0` and a `noise_rng`, the model is wrapped in `NoisyTiming`; without
    the rng (PoA-hat's cost model, reports) it stays exact."""
    base = _exact_timing(config, profile)
    if config.step_time_cv > 0 and noise_rng is not None:
        return NoisyTiming(base, config.step_time_cv, noise_rng)
    return base


def _exact_timing(config: TimingConfig, profile: ProfileArrays | None) -> TimingModel:
    if config.kind == "polynomial":
        return PolynomialTiming(config.speedup_ratio, config.decode_speedup_ratio)
    if profile is None and config.profile is not None:
        profile = profile_arrays(config.profile)
    if profile is None:
        raise ValueError("timing kind 'profile' needs the profile arrays (load them with envs.profiles)")
    return ProfileTiming(profile, config.speedup_ratio, config.decode_speedup_ratio)
