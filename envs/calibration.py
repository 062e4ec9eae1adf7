"""Fit the roofline's efficiency factors to measured profiler data (the H200 / Llama-3.1-8B set
shipped in the ai-dynamo wheel).

The data (`dynamo/planner/tests/data/profiling_results/H200_TP1P_TP1D/`, Llama-3.1-8B-Instruct-FP8
under vLLM on one H200 per worker):

* `selected_prefill_interpolation/raw_data.npz`: `prefill_isl`, `prefill_ttft` (ms): one request
  of ISL tokens on an idle prefill worker.
* `selected_decode_interpolation/raw_data.npz`: `x_kv_usage`, `y_context_length`, `z_itl` (ms),
  `max_kv_tokens`: the decode worker's ITL with a batch at one context length. Active KV tokens
  = x_kv_usage x max_kv_tokens, and the batch size = active KV tokens / context length (the
  throughput column agrees: z_thpt_per_gpu x z_itl / 1000 is that batch within ~3%, except at
  context 350 past ~900 sequences, where the benchmark could not fill the batch).

The fit is `scipy.optimize.least_squares` on relative errors with a soft-L1 loss (scale 5%), so
the few saturated points above do not pull the rest.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from envs.errors import UserError
from envs.sim.hardware import H200_SXM, LLAMA_3_1_8B
from envs.sim.roofline import Deployment, Efficiency, decode_ms, prefill_ms

DATA_SUBDIR = Path("planner/tests/data/profiling_results/H200_TP1P_TP1D")
PREFILL_FILE = Path("selected_prefill_interpolation/raw_data.npz")
DECODE_FILE = Path("selected_decode_interpolation/raw_data.npz")

# The measured deployment. Its KV cache is BF16: max_kv_tokens = 945,029 at 128 KiB per token
# fills 0.9 x 140.4 GiB less the weights; at FP8 (64 KiB) half the budget would be unexplained.
H200_8B_MEASURED = Deployment(model=LLAMA_3_1_8B, gpu=H200_SXM, tp=1, kv_dtype_bytes=2.0)

_NAMES = (
    "gemm_compute",
    "attention_compute",
    "memory",
    "prefill_overhead_ms",
    "decode_overhead_ms",
    "decode_per_seq_ms",
)
_START = (0.5, 0.5, 0.7, 15.0, 3.0, 0.03)
_LOWER = (0.01, 0.01, 0.05, 0.0, 0.0, 0.0)
_UPPER = (1.0, 1.0, 1.0, 100.0, 100.0, 1.0)


class ProfilerDataMissing(UserError, FileNotFoundError):
    """The profiler data is not where we looked (ai-dynamo not installed, or a bad --data)."""


@dataclass(frozen=True, slots=True)
class Measurements:
    """The profiler's points, in our units."""

    prefill_isl_tokens: np.ndarray
    prefill_ttft_ms: np.ndarray
    decode_batch_size: np.ndarray
    decode_context_tokens: np.ndarray
    decode_itl_ms: np.ndarray
    max_kv_tokens: int


@dataclass(frozen=True, slots=True)
class FitResult:
    efficiency: Efficiency
    prefill_fitted_ms: np.ndarray
    decode_fitted_ms: np.ndarray

    def prefill_ape(self, data: Measurements) -> np.ndarray:
        return np.abs(self.prefill_fitted_ms / data.prefill_ttft_ms - 1)

    def decode_ape(self, data: Measurements) -> np.ndarray:
        return np.abs(self.decode_fitted_ms / data.decode_itl_ms - 1)


def find_profiler_data(data_dir: str | Path | None = None) -> Path:
    """The profiler results directory: `data_dir`, or the one inside the installed ai-dynamo."""
    if data_dir is None:
        spec = importlib.util.find_spec("dynamo")
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise ProfilerDataMissing(
                "the H200 profiler data needs the ai-dynamo package (not installed); run `make dynamo` "
                "or pass --data DIR"
            )
        base = Path(locations[0]) / DATA_SUBDIR
    else:
        base = Path(data_dir)
    for part in (PREFILL_FILE, DECODE_FILE):
        if not (base / part).is_file():
            raise ProfilerDataMissing(f"{base / part}: missing (the profiler data; run `make dynamo`)")
    return base


def load_measurements(base: Path) -> Measurements:
    with np.load(base / PREFILL_FILE) as prefill, np.load(base / DECODE_FILE) as decode:
        max_kv = int(np.asarray(decode["max_kv_tokens"]).ravel()[0])
        context = np.asarray(decode["y_context_length"], float)
        active_kv = np.asarray(decode["x_kv_usage"], float) * max_kv
        return Measurements(
            prefill_isl_tokens=np.asarray(prefill["prefill_isl"], float),
            prefill_ttft_ms=np.asarray(prefill["prefill_ttft"], float),
            decode_batch_size=np.maximum(1.0, np.round(active_kv / context)),
            decode_context_tokens=context,
            decode_itl_ms=np.asarray(decode["z_itl"], float),
            max_kv_tokens=max_kv,
        )


def predict(dep: Deployment, eff: Efficiency, data: Measurements) -> tuple[np.ndarray, np.ndarray]:
    """The roofline at every measured point: (prefill ms, decode ms)."""
    prefill = np.asarray(prefill_ms(dep, eff, data.prefill_isl_tokens), float)
    decode = np.asarray(decode_ms(dep, eff, data.decode_batch_size, data.decode_context_tokens), float)
    return prefill, decode


def fit(data: Measurements, dep: Deployment = H200_8B_MEASURED) -> FitResult:
    """Least squares on the relative error of every prefill and decode point, jointly."""

    def residuals(x: np.ndarray) -> np.ndarray:
        prefill, decode = predict(dep, _efficiency(x), data)
        return np.concatenate([prefill / data.prefill_ttft_ms - 1, decode / data.decode_itl_ms - 1])

    solution = least_squares(residuals, _START, bounds=(_LOWER, _UPPER), loss="soft_l1", f_scale=0.05)
    eff = _efficiency(solution.x)
    prefill, decode = predict(dep, eff, data)
    return FitResult(eff, prefill, decode)


def _efficiency(x: np.ndarray) -> Efficiency:
    return Efficiency(**{name: float(value) for name, value in zip(_NAMES, x, strict=True)})


def implied_activation_reserve_bytes(data: Measurements, dep: Deployment = H200_8B_MEASURED) -> float:
    """What vLLM held back per GPU besides weights and KV: 0.9 x HBM - weights - KV capacity."""
    kv = data.max_kv_tokens * dep.kv_bytes_per_token / dep.tp
    return 0.9 * dep.gpu.hbm_capacity_bytes - dep.weight_bytes_resident_per_gpu - kv
