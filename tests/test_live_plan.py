"""What a local deployment runs, read off its plan (pure: no processes started).

Oracles: the process list and the flags each layout must give, counted by hand from the
scenario (3 prefill + 3 decode workers on 3P/3D); the router policy config's YAML written out by
hand in the shape Dynamo's `--router-policy-config` reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from envs.live.deploy import POLICY_CONFIG_FILE, write_plan_files
from envs.live.knob_router import KnobRouterConfig
from envs.live.plan import WORKER_SUFFIX, PlanInputs, plan_deployment
from envs.scenarios import load_scenario
from envs.sim.policy_config import RouterPolicyConfig


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


def _policy_scenario(**policy_extra):
    scenario, _ = load_scenario("agg-4w-prefix", [])
    profile = {
        "default_policy_family": "batch",
        "uncached_isl_buckets": [
            {"min_tokens": 0, "bucket": "short"},
            {"min_tokens": 4096, "bucket": "long"},
        ],
        "policy_classes": [
            {"name": "b-short", "policy_family": "batch", "cache_bucket": "short", "quantum": 2048},
            {"name": "b-long", "policy_family": "batch", "cache_bucket": "long", "quantum": 2048},
        ],
    }
    document = {
        "default_policy_family": "standard",
        "uncached_isl_buckets": [{"min_tokens": 0, "bucket": "all"}],
        "policy_classes": [
            {"name": "std-all", "policy_family": "standard", "cache_bucket": "all", "quantum": 4096},
            {"name": "interactive", "quantum": 8192, "prefill_busy_threshold_frac": 0.5},
        ],
        "models": {scenario.model.name: profile, "other-model": profile},
    } | policy_extra
    policy = TypeAdapter(RouterPolicyConfig).validate_python(document)
    return dataclasses.replace(scenario, router=dataclasses.replace(scenario.router, policy_config=policy))


def _agg_plan(scenario, **kwargs):
    inputs = PlanInputs(
        scenario=scenario,
        model_path=Path("/m"),
        model_name="served",
        http_port=18000,
        control_port=18001,
        bootstrap_ports=(),
        knob_router_config_path=Path("/k.json"),
        **kwargs,
    )
    return plan_deployment(inputs)


def test_the_policy_config_reaches_the_frontend_as_dynamos_yaml(tmp_path):
    scenario = _policy_scenario()
    plan = _agg_plan(scenario, layout="dynamo", policy_config_path=tmp_path / POLICY_CONFIG_FILE)
    frontend = plan.processes[-1].argv
    assert _flag(frontend, "--router-policy-config") == str(tmp_path / POLICY_CONFIG_FILE)
    write_plan_files(plan, tmp_path)
    # By hand: unset fields left out, defaults (queue_policy) written, and the scenario model's
    # profile filed under the served model name, where Dynamo's frontend looks it up.
    batch = {
        "default_policy_family": "batch",
        "uncached_isl_buckets": [
            {"min_tokens": 0, "bucket": "short"},
            {"min_tokens": 4096, "bucket": "long"},
        ],
        "policy_classes": [
            {
                "name": "b-short",
                "quantum": 2048,
                "policy_family": "batch",
                "cache_bucket": "short",
                "queue_policy": "fcfs",
            },
            {
                "name": "b-long",
                "quantum": 2048,
                "policy_family": "batch",
                "cache_bucket": "long",
                "queue_policy": "fcfs",
            },
        ],
    }
    assert yaml.safe_load((tmp_path / POLICY_CONFIG_FILE).read_text()) == {
        "default_policy_family": "standard",
        "uncached_isl_buckets": [{"min_tokens": 0, "bucket": "all"}],
        "policy_classes": [
            {
                "name": "std-all",
                "quantum": 4096,
                "policy_family": "standard",
                "cache_bucket": "all",
                "queue_policy": "fcfs",
            },
            {
                "name": "interactive",
                "quantum": 8192,
                "queue_policy": "fcfs",
                "prefill_busy_threshold_frac": 0.5,
            },
        ],
        "models": {"other-model": batch, "served": batch},
    }


def test_a_scenario_without_a_policy_config_passes_no_flag_and_writes_no_file(tmp_path):
    scenario, _ = load_scenario("agg-4w-prefix", [])
    plan = _agg_plan(scenario, layout="dynamo", policy_config_path=tmp_path / POLICY_CONFIG_FILE)
    assert "--router-policy-config" not in plan.processes[-1].argv and plan.policy_config is None
    write_plan_files(plan, tmp_path)
    assert not (tmp_path / POLICY_CONFIG_FILE).exists()


def test_policy_classes_behind_the_knob_router_are_refused():
    with pytest.raises(ValueError, match=r"router.policy_config: .* run them with --layout dynamo"):
        _agg_plan(_policy_scenario(), policy_config_path=Path("/p.yaml"))
