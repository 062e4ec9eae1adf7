"""The three-regime reading of a sweep, on hand-made rows whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest

from eval.regimes import analyse, grid_points
from eval.sweep_results import SweepRow


def _row(policy: str, concurrency: int, poa_hat: float, seed: int = 0) -> SweepRow:
    return SweepRow(
        scenario="s", policy=policy, seed=seed, concurrency=concurrency, poa_hat=poa_hat,
        poa_window_median=poa_hat, poa_window_p90=poa_hat, poa_num_windows=1, poa_num_decisions=2,
        poa_stage="decode", ttft_mean_s=0.1, ttft_p50_s=0.1, ttft_p99_s=0.1, itl_mean_s=0.01,
        itl_p50_s=0.01, itl_p99_s=0.01, e2e_mean_s=0.2, e2e_p99_s=0.2, throughput_rps=1.0,
        output_tok_s=1.0, prefix_reuse_ratio=0.5, num_requests=10, num_completed=10,
        num_preemptions=0, warmup_s=1.0, duration_s=10.0, sim_time_s=10.0,
    )  # fmt: skip


# Two settings a and b. Plateau 2.0 (32, 64) and 2.2 at 96; the knee (> 1.25 x 2.0 = 2.5) at 128.
LEVELS = {
    8: (1.0, 1.0),
    32: (1.99, 2.01),
    64: (1.99, 2.01),
    96: (2.19, 2.21),
    128: (3.0, 3.4),
    512: (30.0, 34.0),
}


def _rows() -> list[SweepRow]:
    return [_row(p, c, v) for c, pair in LEVELS.items() for p, v in zip("ab", pair, strict=True)]


def test_grid_points_average_seeds_then_take_the_median_and_spread() -> None:
    rows = [_row("a", 8, 1.0, 0), _row("a", 8, 3.0, 1), _row("b", 8, 4.0)]
    (point,) = grid_points(rows)
    # a: mean 2.0; b: 4.0 -> median 3.0, population std 1.0, CV 1/3.
    assert (point.level, point.spread, point.cv) == pytest.approx((3.0, 1.0, 1 / 3))


def test_knee_plateau_growth_and_spread_by_hand() -> None:
    report = analyse(_rows())
    assert report.plateau_level == pytest.approx(2.0)
    assert (report.last_pre_knee_c, report.knee_c) == (96, 128)
    # Pre-knee spreads: 0.01 at 32, 64 and 96; CVs 0.01/2 and 0.01/2.2.
    assert report.plateau_max_cv == pytest.approx(0.005)
    assert report.growth == pytest.approx(32.0 / 2.0)
    # Deepest post-knee spread 2.0 over the pre-knee 0.01.
    assert report.spread_ratio == pytest.approx(200.0)


def test_no_knee_when_nothing_rises() -> None:
    flat = [_row(p, c, 2.0) for c in (32, 64, 96, 128) for p in "ab"]
    report = analyse(flat)
    assert report.knee_c is None and report.growth == pytest.approx(1.0)
    assert math.isinf(report.spread_ratio)  # no spread anywhere: reported, not divided by zero


def test_a_grid_without_plateau_points_is_an_error() -> None:
    with pytest.raises(ValueError, match="no grid point"):
        analyse([_row("a", 8, 1.0)])
