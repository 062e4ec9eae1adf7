"""Run a scenario's exact workload through NVIDIA Dynamo's own offline replay (`dynamo.replay`).

The workload is written as a Mooncake trace (our sessions, block for block), so both simulators
see the same requests; engine, topology, KV-transfer and router settings are translated to the
replay's canonical engine config and `KvRouterConfig`. Needs `make dynamo`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from envs.errors import UserError
from envs.sim.config import EngineConfig, ScenarioConfig
from envs.sim.knobs import kv_router_config_kwargs
from envs.sim.policy_config import policy_config_document
from envs.sim.workload import Session
from envs.traces import mooncake_rows, write_mooncake

REPLAY_ROUTER_MODES = {"kv": "kv_router", "round_robin": "round_robin"}


class DynamoUnavailable(UserError, RuntimeError):
    """ai-dynamo is not installed (run `make dynamo`) or cannot replay this scenario."""


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """The replay report's numbers in our units (seconds, requests/s, tokens/s)."""

    num_requests: int
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    itl_mean_s: float
    e2e_mean_s: float
    e2e_p99_s: float
    throughput_rps: float
    output_tok_s: float
    prefix_reuse_ratio: float
    wall_time_s: float


def dynamo_available() -> bool:
    try:
        _import_replay()
    except DynamoUnavailable:
        return False
    return True


def _import_replay() -> tuple[Any, Any]:
    os.environ.setdefault("DYN_LOG", "warn")  # per-decision INFO logs would dominate the run time
    os.environ.setdefault("RUST_LOG", "warn")
    try:
        from dynamo.llm import KvRouterConfig
        from dynamo.replay.api import run_trace_replay
    except ImportError as error:
        raise DynamoUnavailable(f"ai-dynamo is not installed ({error}); run `make dynamo`") from None
    return run_trace_replay, KvRouterConfig


def _engine_args(engine: EngineConfig, scenario: ScenarioConfig, worker_type: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "block_size": engine.block_size,
        "num_gpu_blocks": engine.num_gpu_blocks,
        "max_num_seqs": engine.max_num_seqs,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "enable_chunked_prefill": engine.enable_chunked_prefill,
        "preemption_mode": engine.preemption_mode,
        "speedup_ratio": scenario.timing.speedup_ratio,
        "decode_speedup_ratio": scenario.timing.decode_speedup_ratio,
        "worker_type": worker_type,
    }
    link = scenario.topology.kv_transfer
    if worker_type == "prefill" and link.bandwidth_gbps > 0:
        # The replay charges the transfer on the prefill side (full prompt).
        args["kv_transfer_bandwidth"] = link.bandwidth_gbps
        args["kv_transfer_bytes_per_token"] = round(scenario.model.kv_bytes_per_token)
    wrapped: dict[str, Any] = {"engine": args}
    if scenario.scaling.startup_s > 0:
        wrapped["startup_time"] = scenario.scaling.startup_s  # the mocker's --startup-time (s)
    return wrapped


def _router_config(scenario: ScenarioConfig, kv_router_config_cls: Any, tmp: Path) -> Any:
    kwargs = kv_router_config_kwargs(scenario.router)
    policy = scenario.router.policy_config
    if policy is not None:  # Dynamo takes the policy file by path (`--router-policy-config`)
        path = tmp / "router-policy.yaml"
        path.write_text(yaml.safe_dump(policy_config_document(policy), sort_keys=False))
        kwargs["router_policy_config"] = str(path)
    return kv_router_config_cls(**kwargs)


def check_replayable(scenario: ScenarioConfig) -> None:
    """Raise DynamoUnavailable when the replay has no equivalent of the scenario."""
    if scenario.router.mode not in REPLAY_ROUTER_MODES:
        raise DynamoUnavailable(
            f"dynamo.replay has no '{scenario.router.mode}' router (only kv and round_robin)"
        )
    if scenario.timing.kind != "polynomial":
        raise DynamoUnavailable("the cross-check compares the mocker polynomial timing model only")
    if scenario.topology.kv_transfer.latency_ms > 0:
        raise DynamoUnavailable("dynamo.replay has no fixed KV-transfer latency")


def run_replay(
    scenario: ScenarioConfig, sessions: Sequence[Session], block_tokens: int, scaling_policy: Any = None
) -> ReplaySummary:
    """Replay `sessions` (open loop at their start times, or closed loop at the scenario's
    concurrency) through Dynamo's replay with the scenario's deployment; P/D moves come from
    `scaling_policy` (the replay's hook object) or else the scenario's `scaling.schedule`."""
    check_replayable(scenario)
    run_trace_replay, kv_router_config_cls = _import_replay()
    topo = scenario.topology
    kwargs: dict[str, Any] = {
        "router_mode": REPLAY_ROUTER_MODES[scenario.router.mode],
        "trace_block_size": block_tokens,
        "replay_concurrency": scenario.workload.concurrency,
    }
    if topo.mode == "agg":
        kwargs.update(
            num_workers=topo.num_workers,
            extra_engine_args=_engine_args(scenario.engine, scenario, "aggregated"),
        )
    else:
        kwargs.update(
            num_prefill_workers=topo.num_prefill_workers,
            num_decode_workers=topo.num_decode_workers,
            prefill_engine_args=_engine_args(scenario.engine_for("prefill"), scenario, "prefill"),
            decode_engine_args=_engine_args(scenario.engine_for("decode"), scenario, "decode"),
        )
    with tempfile.TemporaryDirectory(prefix="poa-gym-replay-") as tmp:
        if scenario.router.mode == "kv":
            kwargs["router_config"] = _router_config(scenario, kv_router_config_cls, Path(tmp))
        if scenario.router.policy_config is not None and scenario.router.policy_config.models:
            kwargs["model_name"] = scenario.model.name  # which model profile applies
        trace = Path(tmp) / "trace.jsonl"
        write_mooncake(mooncake_rows(sessions, block_tokens), trace)
        if scaling_policy is None and scenario.scaling.schedule:
            from envs.sim.scaling import ScheduledScaling
            from eval.replay_scaling import ReplayScalingBridge

            scaling_policy = ReplayScalingBridge(ScheduledScaling(scenario.scaling.schedule))
        if scaling_policy is None:
            report = run_trace_replay(str(trace), **kwargs)
        else:
            report = _run_with_scaling(str(trace), kwargs, scaling_policy)
    return _summary(dict(report.summary))


def _run_with_scaling(trace: str, kwargs: dict[str, Any], scaling_policy: Any) -> Any:
    """`run_trace_replay` with a scaling hook of ours: the public API takes only a Planner
    config, so this calls the native entry it wraps with the same defaults."""
    from dynamo._core import run_mocker_trace_replay
    from dynamo.replay.api import _materialize_offline_report

    defaults: dict[str, Any] = dict.fromkeys(
        (
            "extra_engine_args", "prefill_engine_args", "decode_engine_args", "router_config",
            "ais_perf_config", "replay_concurrency", "agentic_lanes", "report_jsonl_path",
            "max_sim_time_ms", "model_name", "execution_model", "weka_nested_timestamp_basis",
            "sla_ttft_ms", "sla_itl_ms", "sla_e2e_ms", "kv_event_lag_ms",
        )
    )  # fmt: skip
    defaults.update(
        num_workers=1,
        num_prefill_workers=1,
        num_decode_workers=1,
        replay_mode="offline",
        arrival_speedup_ratio=1.0,
        trace_format="mooncake",
        trace_shared_prefix_ratio=0.0,
        trace_num_prefix_groups=0,
        capture_per_request=False,
        capture_planner_details=False,
    )
    native = run_mocker_trace_replay([trace], **{**defaults, **kwargs}, scaling_policy=scaling_policy)
    return _materialize_offline_report(native, planner=None, execution_model=None)


def _summary(summary: dict[str, Any]) -> ReplaySummary:
    ms = 1e-3
    return ReplaySummary(
        num_requests=int(summary["completed_requests"]),
        ttft_mean_s=summary["mean_ttft_ms"] * ms,
        ttft_p50_s=summary["median_ttft_ms"] * ms,
        ttft_p99_s=summary["p99_ttft_ms"] * ms,
        itl_mean_s=summary["mean_itl_ms"] * ms,
        e2e_mean_s=summary["mean_e2e_latency_ms"] * ms,
        e2e_p99_s=summary["p99_e2e_latency_ms"] * ms,
        throughput_rps=summary["request_throughput_rps"],
        output_tok_s=summary["output_throughput_tok_s"],
        prefix_reuse_ratio=summary["prefix_cache_reused_ratio"],
        wall_time_s=summary["wall_time_ms"] * ms,
    )
