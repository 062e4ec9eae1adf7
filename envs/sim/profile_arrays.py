"""The mocker's timing-profile format, as arrays: what `dynamo.mocker --planner-profile-data`
reads, what `envs.sim.roofline` tabulates and what `envs.sim.timing.ProfileTiming` interpolates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
