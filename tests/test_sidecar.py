"""The sidecar's decisions and its fail-safe state machine, without a deployment.

Oracles: hand-counted intervals (the fault starts at exactly the `stale_intervals`-th missed read,
the policy acts again one interval after the metrics come back); the shipped export run beside a
twin `ObservationBuilder` (the same knobs to the last bit); the shipped export's files replaced by
garbage and then restored (a reload fault, then none).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agents.onnx_policy import OnnxPolicy
from agents.sidecar.decider import Decider, DeciderConfig
from agents.sidecar.policies import DYNAMO_DEFAULT_KNOBS, PolicyLoadError, load_policy, parse_knob_values
from agents.sidecar.service import Sidecar, SidecarConfig
from envs.metrics_snapshot import ITL_BUCKETS_S, TTFT_BUCKETS_S, Histogram, MetricsSnapshot, WorkerGauge
from envs.observation import ObservationBuilder

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "default"
SAFE = dict(DYNAMO_DEFAULT_KNOBS)


def _histogram(bounds: tuple[float, ...], value_s: float, count: float) -> Histogram:
    cumulative = tuple(count if value_s <= bound else 0.0 for bound in bounds)
    return Histogram(bounds, cumulative, value_s * count, count)


def snapshot(time_s: float, num_done: float, ttft_s: float = 0.3, inflight: float = 8.0) -> MetricsSnapshot:
    """A deployment that has finished `num_done` requests, each with this TTFT."""
    workers = tuple(WorkerGauge(i, "prefill", 0.0, 500.0 * (i + 1)) for i in range(3)) + tuple(
        WorkerGauge(10 + i, "decode", 100.0 * (i + 1), 0.0) for i in range(3)
    )
    return MetricsSnapshot(
        time_s,
        _histogram(TTFT_BUCKETS_S, ttft_s, num_done),
        _histogram(ITL_BUCKETS_S, 0.02, num_done * 50),
        num_done,
        num_done * 50,
        num_done * 1000,
        num_done * 400,
        inflight,
        1.0,
        3000.0,
        workers,
    )


def _decider(spec: str, stale_intervals: int = 3) -> Decider:
    return Decider(load_policy(spec, SAFE), DeciderConfig(SAFE, stale_intervals))


def test_static_policy_acts_from_the_second_snapshot():
    decider = _decider("static:overlap_score_credit=4")
    decider.adopt_knobs({"prefill_load_scale": 2.0, "unknown": 1.0})  # what the router has in force
    first = decider.observe(snapshot(0.0, 0))
    assert (first.source, first.knobs) == ("hold", SAFE | {"prefill_load_scale": 2.0})
    second = decider.observe(snapshot(5.0, 10))
    # the static policy holds the knobs it does not name at the safe setting
    assert second.source == "policy" and second.knobs == SAFE | {"overlap_score_credit": 4.0}
    assert second.decision_s is not None and second.faults == ()


def test_metrics_fault_starts_at_the_nth_missed_read_and_clears_a_fresh_interval_later():
    decider = _decider("static:overlap_score_credit=4", stale_intervals=3)
    policy_knobs = SAFE | {"overlap_score_credit": 4.0}
    decider.observe(snapshot(0.0, 0))
    decider.observe(snapshot(5.0, 10))
    held = [decider.read_failed("connection refused") for _ in range(2)]
    assert [d.source for d in held] == ["hold", "hold"] and all(d.knobs == policy_knobs for d in held)
    third = decider.read_failed("connection refused")
    assert (third.source, third.started, third.knobs) == ("safe", ("metrics",), SAFE)
    assert "3 intervals" in third.detail
    fourth = decider.read_failed("connection refused")
    assert fourth.started == () and fourth.faults == ("metrics",)
    back = decider.observe(snapshot(30.0, 40))
    assert (back.source, back.ended, back.knobs) == ("hold", ("metrics",), SAFE)
    assert decider.observe(snapshot(35.0, 50)).knobs == policy_knobs


def test_frozen_counters_are_stale_only_while_requests_are_in_flight():
    busy = _decider("default", stale_intervals=2)
    busy.observe(snapshot(0.0, 10))
    decisions = [busy.observe(snapshot(5.0 * i, 10)) for i in (1, 2)]
    assert decisions[-1].started == ("metrics",) and "frozen" in decisions[-1].detail
    idle = _decider("default", stale_intervals=2)
    idle.observe(snapshot(0.0, 10, inflight=0.0))
    assert all(idle.observe(snapshot(5.0 * i, 10, inflight=0.0)).faults == () for i in (1, 2, 3))


def test_a_non_finite_observation_falls_back_and_the_next_clean_interval_recovers():
    decider = _decider("static:router_temperature=0.5")
    decider.observe(snapshot(0.0, 0))
    bad = decider.observe(replace(snapshot(5.0, 10), inflight_requests=math.nan))
    assert (bad.source, bad.started, bad.knobs) == ("safe", ("policy",), SAFE)
    assert "not finite" in decider.faults["policy"]
    good = decider.observe(snapshot(10.0, 20))
    assert good.source == "policy" and good.ended == ("policy",)
    assert good.knobs["router_temperature"] == 0.5


def test_operator_and_reload_faults_hold_the_safe_setting_until_cleared():
    decider = _decider("static:overlap_score_credit=6")
    decider.observe(snapshot(0.0, 0))
    decider.observe(snapshot(5.0, 10))
    decider.set_fault("operator", "asked")
    assert decider.observe(snapshot(10.0, 20)).knobs == SAFE
    decider.set_fault("operator", None)
    assert decider.observe(snapshot(15.0, 30)).knobs["overlap_score_credit"] == 6.0
    with pytest.raises(ValueError, match="reload or operator"):
        decider.set_fault("metrics", "no")


def test_the_shipped_policy_decides_what_its_export_computes():
    decider = _decider(str(SHIPPED))
    onnx = OnnxPolicy.load(SHIPPED)
    twin = ObservationBuilder(decider.policy.observation)
    snapshots = [snapshot(5.0 * i, 10 * i, ttft_s=0.1 * (1 + i % 4)) for i in range(8)]
    twin.reset(snapshots[0])
    decider.observe(snapshots[0])
    for snap in snapshots[1:]:
        last_action = decider.policy.action_for(decider.knobs)
        expected = onnx.knob_values(twin.build(snap, last_action))
        decision = decider.observe(snap)
        assert decision.source == "policy" and decision.knobs == pytest.approx(expected, abs=1e-5)
    assert len({round(d, 6) for d in decider.knobs.values()}) > 1


def test_replacing_the_policy_files_with_garbage_is_a_reload_fault_until_they_load(tmp_path):
    folder = tmp_path / "policy"
    shutil.copytree(SHIPPED / "export", folder)
    sidecar = Sidecar(_config(), _decider(str(folder)), str(folder))
    good = (folder / "policy.onnx").read_bytes()
    (folder / "policy.onnx").write_bytes(b"not an onnx graph" * 10)
    sidecar._check_reload()
    assert "reload" in sidecar.decider.faults and "policy.onnx" in sidecar.decider.faults["reload"]
    (folder / "policy.onnx").write_bytes(good)
    sidecar._check_reload()
    assert sidecar.decider.faults == {}


def test_bad_specs_and_settings_name_the_rule():
    with pytest.raises(PolicyLoadError, match=r"no policy\.json"):
        load_policy("/nonexistent/folder", SAFE)
    with pytest.raises(PolicyLoadError, match="not in the action space"):
        load_policy("static:nope=1", SAFE)
    with pytest.raises(PolicyLoadError, match=r"--safe: overlap_score_credit must be finite"):
        parse_knob_values("overlap_score_credit=-1", "--safe")
    with pytest.raises(ValueError, match="stale_intervals"):
        DeciderConfig(SAFE, 0)
    with pytest.raises(ValueError, match="interval_s"):
        replace(_config(), interval_s=0.0)
    assert parse_knob_values("router_temperature=0.5, prefill_load_scale=2", "--safe") == {
        "router_temperature": 0.5,
        "prefill_load_scale": 2.0,
    }
    assert np.isfinite(list(SAFE.values())).all()


def _config() -> SidecarConfig:
    return SidecarConfig("http://127.0.0.1:1", "http://127.0.0.1:2", "m", "t", "t", interval_s=5.0)


def test_a_policy_of_another_observation_schema_is_refused_by_field(tmp_path):
    import json

    folder = tmp_path / "policy"
    shutil.copytree(SHIPPED / "export", folder)
    spec = json.loads((folder / "policy.json").read_text())
    spec["observation"]["schema_version"] = 2
    (folder / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(PolicyLoadError, match=r"policy\.json.*observation\.schema_version"):
        load_policy(str(folder), SAFE)


def test_the_cli_names_what_is_wrong_without_a_traceback(tmp_path):
    from tests.test_cli_errors import assert_user_error, run_cli

    missing = tmp_path / "nowhere"
    assert_user_error(
        run_cli("sidecar", "--policy", "knee", "--workdir", str(missing)), "no deployment recorded"
    )
    assert_user_error(
        # A frontend alone is plain Dynamo (no knob router), which still needs the model's name.
        run_cli("sidecar", "--policy", "knee", "--frontend-url", "http://127.0.0.1:9"),
        "--frontend-url: also give --model-name",
    )
    assert_user_error(
        run_cli("sidecar", "--policy", "knee", "--frontend-url", "http://127.0.0.1:9", "--model-name", "m"),
        "http://127.0.0.1:9",
    )
    assert_user_error(run_cli("bench", "--sidecar", "--policy", str(missing)), "no policy.json", str(missing))
