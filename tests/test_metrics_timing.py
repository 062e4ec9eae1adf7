"""Metrics on hand-built records, and the profile timing model on a hand-built profile."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from envs.sim.metrics import goodput_rps, percentile, prefix_reuse_ratio, summarize
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.records import RequestRecord
from envs.sim.timing import PolynomialTiming, ProfileTiming


def record(
    request_id: int, arrival: float, first: float, last: float, out: int, cached: int = 0
) -> RequestRecord:
    return RequestRecord(
        request_id,
        request_id,
        0,
        arrival,
        100,
        out,
        cached,
        0,
        0,
        arrival,
        first,
        first,
        first,
        first,
        last,
        0,
        (),
    )


RECORDS = [
    record(0, 0.0, 0.1, 1.1, 11, cached=50),  # ttft 0.1, gaps 0.1 x 10
    record(1, 0.5, 0.9, 1.9, 6),  # ttft 0.4, gaps 0.2 x 5
    record(2, 1.0, 1.2, 1.2, 1, cached=100),  # ttft 0.2, one token: no gap
]


def test_summary_by_hand() -> None:
    s = summarize(RECORDS)
    assert s.num_requests == 3
    assert s.ttft_mean_s == pytest.approx((0.1 + 0.4 + 0.2) / 3)
    assert s.ttft_p50_s == pytest.approx(0.2)  # nearest rank: sorted[round(2 * 0.5)]
    assert s.ttft_p99_s == pytest.approx(0.4)
    # Pooled ITL: (1.0 + 1.0) / (10 + 5) gaps; TPOT averages per request: (0.1 + 0.2) / 2.
    assert s.itl_mean_s == pytest.approx(2.0 / 15)
    assert s.tpot_mean_s == pytest.approx(0.15)
    assert s.e2e_mean_s == pytest.approx((1.1 + 1.4 + 0.2) / 3)
    assert s.duration_s == pytest.approx(1.9)  # first arrival 0 to last token 1.9
    assert s.throughput_rps == pytest.approx(3 / 1.9)
    assert s.output_tok_s == pytest.approx(18 / 1.9)
    assert prefix_reuse_ratio(RECORDS) == pytest.approx(150 / 300)


def test_nearest_rank_percentile() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == 5.0  # round(4 * 0.9) = 4
    assert percentile(values, 60) == 3.0  # round(4 * 0.6) = 2
    assert np.isnan(percentile([], 50))


def test_goodput_applies_every_slo() -> None:
    assert goodput_rps(RECORDS) == pytest.approx(3 / 1.9)
    assert goodput_rps(RECORDS, ttft_slo_s=0.25) == pytest.approx(2 / 1.9)
    assert goodput_rps(RECORDS, itl_slo_s=0.15) == pytest.approx(2 / 1.9)  # the one-token request passes
    assert goodput_rps(RECORDS, ttft_slo_s=0.25, e2e_slo_s=1.0) == pytest.approx(1 / 1.9)


def hand_profile() -> ProfileArrays:
    return ProfileArrays(
        prefill_isl=np.array([100.0, 1100.0, 2100.0]),
        prefill_ttft_ms=np.array([20.0, 40.0, 80.0]),
        decode_active_kv_tokens=np.array([0.0, 1000.0]),
        decode_context_length=np.array([100.0, 300.0]),
        decode_itl=np.array([[4.0, 6.0], [10.0, 20.0]]),
    )


def test_profile_prefill_interpolates_and_extrapolates() -> None:
    timing = ProfileTiming(hand_profile())
    assert timing.prefill_ms(600) == pytest.approx(30.0)
    assert timing.prefill_ms(1600) == pytest.approx(60.0)
    assert timing.prefill_ms(3100) == pytest.approx(120.0)  # the last segment's slope, extended
    assert timing.prefill_ms(0) == 0.0


def test_profile_decode_is_bilinear_and_extrapolated() -> None:
    timing = ProfileTiming(hand_profile(), speedup_ratio=2.0)
    # Centre of the cell: mean of the four corners, halved by the speedup.
    assert timing.decode_ms(500, 10**6, 200.0) == pytest.approx((4 + 6 + 10 + 20) / 4 / 2)
    # Past the grid the edge cell extends linearly (the mocker's Bilinear::extrapolate(true)):
    # kv 5000 -> fraction 5, context 1000 -> 4.5; rows 4 -> 6 and 10 -> 20 give 13 and 55.
    assert timing.decode_ms(5000, 10**6, 1000.0) == pytest.approx((13 * (1 - 5) + 55 * 5) / 2)
    fast = dataclasses.replace(hand_profile(), decode_itl=np.full((2, 2), 0.25))
    assert ProfileTiming(fast, speedup_ratio=2.0).decode_ms(500, 10**6, 200.0) == pytest.approx(1.0 / 2)


def test_profile_rejects_malformed_axes() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        ProfileArrays(
            np.array([2.0, 1.0]),
            np.array([1.0, 2.0]),
            np.array([0.0, 1.0]),
            np.array([1.0, 2.0]),
            np.ones((2, 2)),
        )


def test_polynomial_by_hand() -> None:
    timing = PolynomialTiming()
    assert timing.prefill_ms(4096) == pytest.approx(4.209989e-7 * 4096**2 + 1.518344e-2 * 4096 + 16.50142)
    assert timing.decode_ms(0, 1000, 0.0) == pytest.approx(5.74)
    assert timing.decode_ms(2000, 1000, 0.0) == pytest.approx(-25.74 + 54.01 + 5.74)  # u capped at 1
