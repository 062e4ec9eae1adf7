"""Metrics snapshots, Prometheus text, and the one observation builder.

Oracles: a real Dynamo 1.6.1 frontend exposition (tests/data), hand-computed histogram
quantiles, and the same observation built from a simulator snapshot and from its Prometheus
text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from envs.metrics_snapshot import TTFT_BUCKETS_S, Histogram, MetricsSnapshot, WorkerGauge
from envs.observation import FEATURES, ObservationBuilder, ObservationConfig, feature_index
from envs.prometheus import MetricsFormatError, parse_snapshot, render_snapshot
from envs.sim.config import ScenarioConfig, TopologyConfig, WorkloadConfig
from envs.sim.run import build_cluster
from envs.sim_metrics import SimMetrics

FIXTURE = Path(__file__).parent / "data" / "dynamo161_frontend_metrics.txt"


def test_parses_a_real_dynamo_frontend_exposition() -> None:
    snapshot = parse_snapshot(FIXTURE.read_text(), time_s=0.0)
    # Values read by hand from the fixture (154 requests: 150 streamed + 4 unary).
    assert snapshot.ttft.count == 154
    assert snapshot.ttft.bounds == TTFT_BUCKETS_S
    assert snapshot.itl.count == 4710
    assert snapshot.requests_total == 154
    assert snapshot.output_tokens_total == 4864
    assert snapshot.input_tokens_total == 60098
    assert sorted(w.worker_type for w in snapshot.workers) == ["decode", "decode", "prefill"]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # 10 observations: 4 in (0, 0.1], 6 in (0.1, 0.2]. P50 = rank 5, 1 of 6 into the second
    # bucket: 0.1 + 0.1 * 1/6. P99 = rank 9.9: 0.1 + 0.1 * 5.9/6.
    histogram = Histogram((0.1, 0.2), (4.0, 10.0), 1.5, 10.0)
    assert histogram.quantile(0.5) == pytest.approx(0.1 + 0.1 / 6)
    assert histogram.quantile(0.99) == pytest.approx(0.1 + 0.1 * 5.9 / 6)
    assert math.isnan(Histogram.empty((0.1,)).quantile(0.5))


def _snapshot_after(duration_s: float) -> MetricsSnapshot:
    scenario = ScenarioConfig(
        seed=3,
        duration_s=30.0,
        topology=TopologyConfig(mode="disagg", num_prefill_workers=1, num_decode_workers=2),
        workload=WorkloadConfig(
            arrival="closed_loop", concurrency=12, isl_tokens=512, osl_tokens=24, shared_prefix_ratio=0.5
        ),
    )
    cluster = build_cluster(scenario)
    metrics = SimMetrics(cluster)
    cluster.env.run(until=duration_s)
    return metrics.snapshot()


def test_simulator_snapshot_conserves_requests() -> None:
    snapshot = _snapshot_after(5.0)
    # Little's-law bookkeeping: a closed loop of 12 clients always has 12 requests in flight.
    assert snapshot.inflight_requests == 12
    assert 0 <= snapshot.queued_requests <= snapshot.inflight_requests
    assert snapshot.ttft.count == snapshot.requests_total > 0
    assert snapshot.output_tokens_total == 24 * snapshot.requests_total
    booked = sum(w.active_decode_blocks for w in snapshot.workers if w.worker_type == "decode")
    assert booked > 0


def test_observation_is_identical_from_snapshot_and_from_its_prometheus_text() -> None:
    before, after = _snapshot_after(5.0), _snapshot_after(10.0)
    config = ObservationConfig(("overlap_score_credit", "router_temperature"), history_len=2)
    action = np.array([0.25, -0.5])
    direct, parsed = ObservationBuilder(config), ObservationBuilder(config)
    direct.reset(before)
    parsed.reset(parse_snapshot(render_snapshot(before), before.time_s))
    from_snapshot = direct.build(after, action)
    from_text = parsed.build(parse_snapshot(render_snapshot(after), after.time_s), action)
    assert from_snapshot.shape == (config.size,)
    np.testing.assert_array_equal(from_snapshot, from_text)
    assert from_snapshot[feature_index(config, "knob_router_temperature")] == np.float32(-0.5)


def test_features_by_hand() -> None:
    bounds = (0.1, 1.0)
    workers = (
        WorkerGauge(0, "prefill", 0, 300),
        WorkerGauge(1, "decode", 10, 0),
        WorkerGauge(2, "decode", 30, 0),
    )
    before = MetricsSnapshot(0.0, Histogram.empty(bounds), Histogram.empty(bounds), 0, 0, 0, 0, 0, 0, 200, ())
    after = MetricsSnapshot(
        5.0, Histogram(bounds, (10.0, 10.0), 0.5, 10.0), Histogram(bounds, (90.0, 90.0), 1.0, 90.0),
        10, 100, 1000, 250, 8, 2, 200, workers,
    )  # fmt: skip
    builder = ObservationBuilder(ObservationConfig(("router_temperature",), history_len=1))
    builder.reset(before)
    values = dict(zip(FEATURES, builder.build(after, np.array([0.0]))[: len(FEATURES)], strict=False))
    assert values["throughput_log1p_rps"] == pytest.approx(math.log1p(2.0))  # 10 requests / 5 s
    assert values["kv_hit_rate"] == pytest.approx(0.25)
    assert values["queued_fraction"] == pytest.approx(0.25)
    assert values["decode_kv_utilisation"] == pytest.approx(20 / 100)  # mean 20 of 200/2 blocks
    assert values["decode_imbalance"] == pytest.approx(1.0)  # (30 - 10) / 20
    assert values["ttft_p99_log10_s"] == pytest.approx(math.log10(0.1 * 9.9 / 10), rel=1e-6)
    assert values["no_completions"] == 0.0


def test_bad_exposition_is_a_clear_error() -> None:
    with pytest.raises(MetricsFormatError, match="not Prometheus text"):
        parse_snapshot('dynamo_frontend_inflight_requests{model="m" 3\n', 0.0)
