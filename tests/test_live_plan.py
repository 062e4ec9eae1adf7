"""What a local deployment runs, read off its plan (pure: no processes started).

Oracles: the process list and the flags each layout must give, counted by hand from the
scenario (3 prefill + 3 decode workers on 3P/3D).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from envs.live.knob_router import KnobRouterConfig
from envs.live.plan import WORKER_SUFFIX, PlanInputs, plan_deployment
from envs.scenarios import load_scenario


def _plan(**kwargs):
    scenario, _ = load_scenario("llama70b-b200-3p3d-multiturn", [])
    inputs = PlanInputs(
        scenario=scenario,
        model_path=Path("/m"),
        model_name="m",
        http_port=18000,
        control_port=18001,
        bootstrap_ports=(18002, 18003, 18004),
        knob_router_config_path=Path("/k.json"),
        profile_npz=Path("/p.npz"),
        **kwargs,
    )
    return plan_deployment(inputs)


def _flag(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_knob_router_layout_hides_the_prefill_workers_behind_it():
    plan = _plan()
    names = [p.name for p in plan.processes]
    assert names == ["prefill-workers", "decode-workers", "knob-router", "frontend"]
    prefill = plan.processes[0].argv
    assert _flag(prefill, "--model-name") == "m" + WORKER_SUFFIX
    assert (
        _flag(prefill, "--num-workers") == "3" and _flag(prefill, "--bootstrap-ports") == "18002,18003,18004"
    )
    assert plan.knob_router["upstream_endpoint"] == _flag(prefill, "--endpoint").removeprefix("dyn://")


def test_split_workers_gives_each_worker_its_process_and_each_prefill_worker_its_port():
    plan = _plan(split_workers=True)
    prefill = [p for p in plan.processes if p.name.startswith("prefill-worker-")]
    assert [p.name for p in prefill] == ["prefill-worker-0", "prefill-worker-1", "prefill-worker-2"]
    assert [_flag(p.argv, "--bootstrap-ports") for p in prefill] == ["18002", "18003", "18004"]
    assert all(_flag(p.argv, "--num-workers") == "1" for p in prefill)
    decode = [p for p in plan.processes if p.name.startswith("decode-worker")]
    assert [p.name for p in decode] == ["decode-worker-0", "decode-worker-1", "decode-worker-2"]
    assert all(_flag(p.argv, "--num-workers") == "1" and "--bootstrap-ports" not in p.argv for p in decode)


def test_the_dynamo_layout_is_plain_dynamo():
    plan = _plan(layout="dynamo")
    assert [p.name for p in plan.processes] == ["prefill-workers", "decode-workers", "frontend"]
    assert plan.knob_router == {}
    assert all(_flag(p.argv, "--model-name") == "m" for p in plan.processes[:2])
    with pytest.raises(ValueError, match="layout: must be one of"):
        _plan(layout="sidecar")


def test_the_knob_router_takes_the_clusters_discovery_and_request_plane():
    fields = _plan().knob_router
    assert KnobRouterConfig(**fields).discovery_backend == "file"
    assert KnobRouterConfig(**fields, discovery_backend="etcd", request_plane="nats").request_plane == "nats"
    with pytest.raises(ValueError, match="discovery_backend must be one of"):
        KnobRouterConfig(**fields, discovery_backend="consul")
