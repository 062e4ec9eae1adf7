"""Mocker-format timing profiles (.npz): read them for the simulator's `profile` timing model,
and write them (`poa-gym profile export`) for `dynamo.mocker --planner-profile-data`.

The keys are the ones `dynamo.mocker --planner-profile-data` reads: `prefill_isl`,
`prefill_ttft_ms`, `decode_active_kv_tokens`, `decode_context_length`, `decode_itl`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envs.errors import ScenarioError
from envs.sim.profile_arrays import ProfileArrays

PROFILE_KEYS = (
    "prefill_isl",
    "prefill_ttft_ms",
    "decode_active_kv_tokens",
    "decode_context_length",
    "decode_itl",
)


def load_profile(path: str | Path) -> ProfileArrays:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in PROFILE_KEYS if key not in data.files]
            if missing:
                raise ScenarioError(
                    f"{path}: field '{missing[0]}': missing from the profile (needs {PROFILE_KEYS})"
                )
            arrays = {key: np.asarray(data[key], dtype=float) for key in PROFILE_KEYS}
    except (OSError, ValueError) as error:
        if isinstance(error, ScenarioError):
            raise
        raise ScenarioError(f"{path}: not a readable .npz profile ({error})") from None
    grid = arrays["decode_itl"]
    want = (len(arrays["decode_active_kv_tokens"]), len(arrays["decode_context_length"]))
    if grid.shape == want[::-1] and want[0] != want[1]:
        arrays["decode_itl"] = grid.T  # the profiler stores (context, kv) in some versions
    try:
        return ProfileArrays(**arrays)
    except ValueError as error:
        raise ScenarioError(f"{path}: invalid profile: {error}") from None


def save_profile(arrays: ProfileArrays, path: str | Path) -> Path:
    """Write `arrays` as the mocker reads them: float64 (ndarray-npy reads `f64` arrays only),
    `decode_itl` shaped (active KV tokens, context length)."""
    path = Path(path)
    data = {key: np.ascontiguousarray(getattr(arrays, key), dtype=np.float64) for key in PROFILE_KEYS}
    with path.open("wb") as handle:  # a file handle: np.savez would append ".npz" to a bare name
        np.savez(handle, **data)
    return path
