"""What a local Dynamo deployment of a scenario runs: the processes and their exact command lines.

Pure (no processes, no files): `envs.live.deploy` starts what this plans. The deployment is
Dynamo 1.6.1 on loopback with file discovery, the TCP request plane and ZMQ events:

* the scenario's workers as `dynamo.mocker` processes (one process per tier, `--num-workers N`),
  with the scenario's engine (blocks, batch budgets, prefix caching, chunked prefill, preemption),
  its timing (the mocker's polynomial, or the scenario's profile exported as a mocker NPZ) and its
  KV-transfer link; `speedup` divides every modelled duration, as the mocker's `--speedup-ratio`;
* the knob router (`envs.live.knob_router`) in front of the tier the knobs act on (aggregated
  workers, or prefill workers); the real workers of that tier register as `<model>--workers`;
* `dynamo.frontend` with the KV router and the scenario's router settings (in a disaggregated
  deployment it routes the decode stage itself, load-only, as Dynamo 1.6.1 forces), and the
  scenario's router policy config as the YAML file `--router-policy-config` reads (the plan
  holds its contents; `envs.live.deploy` writes it).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from envs.sim.busy import BusyThresholds
from envs.sim.config import EngineConfig, ScenarioConfig
from envs.sim.knobs import RELEASE_KNOBS, knob_values, kv_router_config_kwargs
from envs.sim.policy_config import policy_config_document

WORKER_SUFFIX = "--workers"
# "knob-router": the knob router stands in for the knob tier; "dynamo": plain Dynamo 1.6.1, the
# baseline a deployment with the knob router (and the sidecar) is measured against.
LAYOUTS = ("knob-router", "dynamo")
HIDDEN_NAMESPACE = "poagym"
MIGRATION_LIMIT = 3


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LivePlan:
    """The processes in start order, and what clients and controllers connect to."""

    processes: tuple[ProcessSpec, ...]
    model_name: str
    http_port: int
    control_port: int
    knob_router: dict[str, Any]  # `KnobRouterConfig`'s fields
    policy_config: dict[str, Any] | None = None  # the `--router-policy-config` file's document

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """The scenario and the machine-specific choices (ports, paths) a plan needs."""

    scenario: ScenarioConfig
    model_path: Path
    model_name: str
    http_port: int
    control_port: int
    bootstrap_ports: tuple[int, ...]
    knob_router_config_path: Path
    profile_npz: Path | None = None
    speedup: float = 1.0
    layout: str = "knob-router"  # or "dynamo": no knob router, the frontend routes every stage
    # One process per worker of every tier (to kill one alone, or to move one between the pools).
    split_workers: bool = False
    policy_config_path: Path | None = None  # where the router policy config's YAML goes

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: must be one of {LAYOUTS}, got {self.layout!r}")
        if not self.speedup > 0:
            raise ValueError(f"speedup: must be > 0, got {self.speedup}")
        if self.scenario.router.router_semantics != "dynamo-1.6":
            raise ValueError("a live deployment runs Dynamo 1.6.1: set router.router_semantics=dynamo-1.6")
        if self.scenario.router.mode != "kv":
            raise ValueError(
                f"router.mode: a live deployment uses Dynamo's KV router, not {self.scenario.router.mode!r}"
            )
        if self.layout == "knob-router" and BusyThresholds.of(self.scenario.router).enabled:
            raise ValueError(
                "router.active_*_threshold: busy thresholds act at Dynamo's frontend, which sees only "
                "the knob router in this layout; run them with --layout dynamo"
            )
        if self.scenario.router.policy_config is not None:
            self._check_policy_config()
        if self.scenario.router.router_queue_policy == "lcfs":
            raise ValueError("router.router_queue_policy: Dynamo 1.6.1's frontend takes fcfs or wspt")
        if self.scenario.timing.kind == "profile" and self.profile_npz is None:
            raise ValueError("a profile-timed scenario needs its profile exported as an NPZ")
        if (
            self.scenario.topology.mode == "disagg"
            and len(self.bootstrap_ports) != self.scenario.topology.num_prefill_workers
        ):
            raise ValueError("one bootstrap port per prefill worker")

    def _check_policy_config(self) -> None:
        if self.layout == "knob-router":
            raise ValueError(
                "router.policy_config: policy classes queue at Dynamo's frontend, which sees only the "
                "knob router in this layout; run them with --layout dynamo"
            )
        if self.policy_config_path is None:
            raise ValueError("router.policy_config: the plan needs policy_config_path to write it to")


def plan_deployment(inputs: PlanInputs) -> LivePlan:
    scenario = inputs.scenario
    knob = inputs.layout == "knob-router"
    suffix = WORKER_SUFFIX if knob else ""
    if scenario.topology.mode == "agg":
        tier, role = "agg", "aggregated"
        upstream = f"{HIDDEN_NAMESPACE}.workers.generate" if knob else None
        workers = _mockers(inputs, "agg", upstream, suffix)
    else:
        tier, role = "prefill", "prefill"
        upstream = f"{HIDDEN_NAMESPACE}.prefill.generate" if knob else "dynamo.prefill.generate"
        workers = _mockers(inputs, "prefill", upstream, suffix) + _mockers(inputs, "decode", None, "")
    if not knob:
        processes = (*workers, _frontend(inputs))
        policy = policy_document(inputs)
        return LivePlan(processes, inputs.model_name, inputs.http_port, inputs.control_port, {}, policy)
    knob_router = {
        "model_name": inputs.model_name,
        "model_path": str(inputs.model_path),
        "role": role,
        "serve_endpoint": "dynamo.knobs.generate",
        "upstream_endpoint": upstream,
        "block_size": scenario.engine_for(tier).block_size,
        "kv_router": kv_router_config_kwargs(scenario.router),
        "router": asdict(scenario.router),
        "knobs": scenario_knobs(scenario),
        "control_port": inputs.control_port,
    }
    router = ProcessSpec(
        "knob-router",
        (sys.executable, "-m", "envs.live.knob_router", "--config", str(inputs.knob_router_config_path)),
    )
    processes = (*workers, router, _frontend(inputs))
    return LivePlan(processes, inputs.model_name, inputs.http_port, inputs.control_port, knob_router)


def policy_document(inputs: PlanInputs) -> dict[str, Any] | None:
    """The scenario's router policy config as Dynamo's YAML holds it, its profile for the
    scenario's model filed under the served model name (the simulator looks it up by the former,
    Dynamo's frontend by the latter)."""
    policy = inputs.scenario.router.policy_config
    if policy is None:
        return None
    document = policy_config_document(policy)
    models = document.get("models", {})
    if inputs.scenario.model.name in models:
        profile = models.pop(inputs.scenario.model.name)
        document["models"] = models | {inputs.model_name: profile}
    return document


def scenario_knobs(scenario: ScenarioConfig) -> dict[str, float]:
    """The scenario's own values of the knobs the knob router takes per request."""
    return knob_values(scenario.router, RELEASE_KNOBS["dynamo-1.6"])


def _mockers(inputs: PlanInputs, tier: str, endpoint: str | None, suffix: str) -> list[ProcessSpec]:
    """The tier's mocker processes: one with `--num-workers N`, or N of one worker each."""
    topology = inputs.scenario.topology
    count = {"agg": topology.num_workers, "prefill": topology.num_prefill_workers}.get(
        tier, topology.num_decode_workers
    )
    ports = inputs.bootstrap_ports
    if not inputs.split_workers:
        return [_mocker(inputs, f"{tier}-workers", tier, count, endpoint, suffix, ports)]
    return [
        _mocker(inputs, f"{tier}-worker-{i}", tier, 1, endpoint, suffix, ports[i : i + 1])
        for i in range(count)
    ]


def _mocker(
    inputs: PlanInputs,
    name: str,
    tier: str,
    count: int,
    endpoint: str | None,
    suffix: str,
    bootstrap_ports: tuple[int, ...],
) -> ProcessSpec:
    scenario = inputs.scenario
    topology = scenario.topology
    argv = [sys.executable, "-m", "dynamo.mocker", "--model-path", str(inputs.model_path)]
    argv += ["--model-name", inputs.model_name + suffix, "--num-workers", str(count)]
    argv += ["--discovery-backend", "file", "--request-plane", "tcp"]
    if endpoint is not None:
        argv += ["--endpoint", f"dyn://{endpoint}"]
    argv += _engine_flags(scenario.engine_for(tier)) + _timing_flags(inputs)
    if tier != "agg":
        argv += ["--disaggregation-mode", tier]
    if tier == "prefill":
        argv += ["--bootstrap-ports", ",".join(str(port) for port in bootstrap_ports)]
        argv += ["--kv-transfer-bandwidth", f"{topology.kv_transfer.bandwidth_gbps:g}"]
        argv += ["--kv-bytes-per-token", str(round(scenario.model.kv_bytes_per_token))]
    return ProcessSpec(name, tuple(argv))


def _engine_flags(engine: EngineConfig) -> list[str]:
    flags = ["--block-size", str(engine.block_size), "--num-gpu-blocks-override", str(engine.num_gpu_blocks)]
    flags += [
        "--max-num-seqs",
        str(engine.max_num_seqs),
        "--max-num-batched-tokens",
        str(engine.max_num_batched_tokens),
    ]
    flags += ["--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching"]
    flags += ["--enable-chunked-prefill" if engine.enable_chunked_prefill else "--no-enable-chunked-prefill"]
    return [*flags, "--preemption-mode", engine.preemption_mode]


def _timing_flags(inputs: PlanInputs) -> list[str]:
    timing = inputs.scenario.timing
    flags = ["--speedup-ratio", f"{timing.speedup_ratio * inputs.speedup:g}"]
    flags += ["--decode-speedup-ratio", f"{timing.decode_speedup_ratio:g}"]
    if inputs.profile_npz is not None:
        flags += ["--planner-profile-data", str(inputs.profile_npz)]
    return flags


def _frontend(inputs: PlanInputs) -> ProcessSpec:
    router = inputs.scenario.router
    argv = [
        sys.executable,
        "-m",
        "dynamo.frontend",
        "--http-host",
        "127.0.0.1",
        "--http-port",
        str(inputs.http_port),
    ]
    argv += ["--discovery-backend", "file", "--request-plane", "tcp", "--router-mode", "kv"]
    # A request caught by a worker leaving (a P/D move's drain, `envs.live.pools`) goes to another
    # one, as Dynamo's graceful-shutdown guide advises; a request that completes is never resent.
    argv += ["--migration-limit", str(MIGRATION_LIMIT)]
    argv += ["--router-kv-overlap-score-credit", f"{router.overlap_score_credit:g}"]
    argv += ["--router-kv-overlap-score-credit-decay", f"{router.overlap_score_credit_decay:g}"]
    argv += ["--router-prefill-load-scale", f"{router.prefill_load_scale:g}"]
    argv += ["--router-decode-active-request-weight", f"{router.decode_active_request_weight:g}"]
    argv += ["--router-temperature", f"{router.router_temperature:g}"]
    if router.router_queue_threshold is not None:
        argv += ["--router-queue-threshold", f"{router.router_queue_threshold:g}"]
        argv += ["--router-queue-policy", router.router_queue_policy]
    if router.conditional_disagg is not None:
        # Dynamo bypasses only where decode workers publish KV events; the mocker's do not.
        argv += ["--router-conditional-disagg", "--router-conditional-disagg-config"]
        argv += [json.dumps(asdict(router.conditional_disagg))]
    for name, value in asdict(BusyThresholds.of(router)).items():
        if value is not None:
            argv += ["--" + name.replace("_", "-"), f"{value:g}"]
    if router.policy_config is not None:
        argv += ["--router-policy-config", str(inputs.policy_config_path)]
    return ProcessSpec("frontend", tuple(argv))
