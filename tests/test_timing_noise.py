"""Timing noise: unbiased lognormal factors, reproducible per (seed, noise_stream), and
independent of the workload, which every noise realisation must leave unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.sim.config import ScenarioConfig, TimingConfig, TopologyConfig, WorkloadConfig
from envs.sim.run import hardware_noise_rng, simulate
from envs.sim.timing import NoisyTiming, PolynomialTiming, make_timing


def test_factor_has_mean_one_and_the_requested_cv() -> None:
    exact = PolynomialTiming()
    noisy = NoisyTiming(exact, 0.1, np.random.default_rng(3))
    ratios = np.array([noisy.prefill_ms(512) / exact.prefill_ms(512) for _ in range(40_000)])
    # Standard error of the mean is 0.1 / sqrt(40000) = 5e-4: a 4-sigma band.
    assert abs(ratios.mean() - 1.0) < 2e-3
    assert abs(ratios.std() / ratios.mean() - 0.1) < 3e-3


def test_exact_without_cv_or_rng() -> None:
    rng = np.random.default_rng(0)
    assert isinstance(make_timing(TimingConfig(), None, rng), PolynomialTiming)
    assert isinstance(make_timing(TimingConfig(step_time_cv=0.05), None, None), PolynomialTiming)
    assert isinstance(make_timing(TimingConfig(step_time_cv=0.05), None, rng), NoisyTiming)


def test_noise_streams_are_reproducible_and_distinct() -> None:
    first = hardware_noise_rng(7, 2).random(4)
    assert np.array_equal(first, hardware_noise_rng(7, 2).random(4))
    assert not np.array_equal(first, hardware_noise_rng(7, 3).random(4))
    assert not np.array_equal(first, hardware_noise_rng(8, 2).random(4))


def _scenario(cv: float, stream: int) -> ScenarioConfig:
    return ScenarioConfig(
        seed=4,
        duration_s=6.0,
        topology=TopologyConfig(mode="disagg", num_prefill_workers=1, num_decode_workers=2),
        timing=TimingConfig(step_time_cv=cv, noise_stream=stream),
        workload=WorkloadConfig(
            arrival="closed_loop",
            concurrency=8,
            isl_tokens=256,
            osl_tokens=16,
            shared_prefix_ratio=0.5,
            num_prefix_groups=3,
        ),
    )


def _workload(records) -> list[tuple]:
    return sorted((r.session_id, r.input_tokens, r.output_tokens) for r in records)


def test_noise_changes_timing_but_not_the_workload() -> None:
    exact = simulate(_scenario(0.0, 0)).records
    noisy = simulate(_scenario(0.2, 0)).records
    other = simulate(_scenario(0.2, 1)).records
    assert simulate(_scenario(0.2, 0)).records == noisy  # twin run: bit for bit
    assert [r.ttft_s for r in noisy] != [r.ttft_s for r in exact]
    assert [r.ttft_s for r in noisy] != [r.ttft_s for r in other]
    # Closed loop: a different timing reorders who sends next, but the sessions drawn are the
    # same stream, so the first requests of each run carry the same prompts.
    size = min(len(exact), len(noisy), len(other)) // 2
    by_id = [sorted(_workload(run), key=lambda t: t[0])[:size] for run in (exact, noisy, other)]
    assert by_id[0] == by_id[1] == by_id[2]


def test_noise_stream_is_ignored_without_noise() -> None:
    base = simulate(_scenario(0.0, 0)).records
    assert simulate(dataclasses.replace(_scenario(0.0, 5))).records == base
