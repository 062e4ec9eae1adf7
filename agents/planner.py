"""Dynamo's own Planner as a P/D baseline: the shipped planner code (`dynamo.planner`), built the
way Dynamo's replay builds it, driving our simulator (`DynamoPlannerPolicy`) or Dynamo's replay
(the adapter is the replay's hook object itself) through the same scaling hook: a dict of the
pools' ids, each worker's ForwardPassMetrics and the traffic since the last tick, answered by
`{"target_prefill", "target_decode", "next_tick_ms"}`.

Load-based scaling (the reactive path, every `load_interval_s`) reads each worker's forward-pass
metrics: a prefill pool grows when a worker's queued prefill tokens reach a share of the context
length (1/10 for the `latency` target, all of it for `throughput`) and a decode pool when its KV
use passes 40% / 100%; the budget caps the total. Throughput-based scaling needs AISimulate's
performance models (`aisimulate` and `aisimulate_core`, which NVIDIA ships from its own index and
these machines cannot reach), so it stays off, as the replay itself falls back to load-only
without them.

`aisimulate_core` is imported at the top of the planner's performance-model package even when
nothing there runs. Where it is missing, `ensure_planner_importable` registers a placeholder for
exactly the three names imported, each raising ImportError if it is ever called; the load-based
path never calls them (a test runs the planner with the placeholder and checks it scaled).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import types
from typing import Any, Literal

from envs.errors import UserError
from envs.sim.config import EngineConfig, ScenarioConfig
from envs.sim.scaling import ScalingDecision, ScalingSnapshot, WorkerPass

PlannerTarget = Literal["latency", "throughput"]
INSTALL_HINT = "run `make dynamo` (it installs Dynamo's Planner dependencies too)"


class _AisimulateUnavailable:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError("aisimulate_core is not installed: AIS performance models are unavailable")


def ensure_planner_importable() -> None:
    """Import-time placeholders for `aisimulate_core` where it is not installed (see above)."""
    if "aisimulate_core" in sys.modules or importlib.util.find_spec("aisimulate_core") is not None:
        return
    root, sdk, engine = (
        types.ModuleType(n) for n in ("aisimulate_core", "aisimulate_core.sdk", "aisimulate_core.sdk.engine")
    )
    sdk.ForwardPassPerfModelConfig = sdk.RustForwardPassPerfModel = _AisimulateUnavailable  # type: ignore[attr-defined]
    engine.compile_engine = _AisimulateUnavailable  # type: ignore[attr-defined]
    root.sdk, sdk.engine = sdk, engine  # type: ignore[attr-defined]
    sys.modules.update(
        {"aisimulate_core": root, "aisimulate_core.sdk": sdk, "aisimulate_core.sdk.engine": engine}
    )


def planner_config(
    scenario: ScenarioConfig, target: PlannerTarget = "latency", load_interval_s: int = 5
) -> dict[str, Any]:
    """A load-based Planner for the scenario's deployment: one GPU per worker, the budget the
    scenario's `scaling.max_workers` (or its current size)."""
    topology = scenario.topology
    agg = topology.mode == "agg"
    size = topology.num_workers if agg else topology.num_prefill_workers + topology.num_decode_workers
    return {
        "mode": "agg" if agg else "disagg",
        "backend": "mocker",
        "optimization_target": target,
        "enable_load_scaling": True,
        "enable_throughput_scaling": False,
        "load_adjustment_interval_seconds": load_interval_s,
        "max_gpu_budget": scenario.scaling.max_workers or size,
        "min_gpu_budget": 1,
        "prefill_engine_num_gpu": 1,
        "decode_engine_num_gpu": 1,
    }


def _capabilities(engine: EngineConfig, context_length_tokens: int) -> Any:
    from dynamo.planner.core.types import EngineCapabilities

    return EngineCapabilities(
        num_gpu=1,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        max_num_seqs=engine.max_num_seqs,
        context_length=context_length_tokens,
        max_kv_tokens=engine.num_gpu_blocks * engine.block_size,
    )


def dynamo_planner(
    scenario: ScenarioConfig,
    target: PlannerTarget = "latency",
    load_interval_s: int = 5,
    context_length_tokens: int = 131_072,
) -> Any:
    """A fresh Dynamo Planner adapter (`ReplayPlannerAdapter`) for the scenario; use it once, as
    a context manager. `context_length_tokens` is the model's (Llama 3.1: 128k), which scales
    the prefill queue thresholds.

    Raises:
        UserError: Dynamo or its Planner's dependencies are not installed.
    """
    ensure_planner_importable()
    try:
        from dynamo.planner.config.planner_config import PlannerConfig
        from dynamo.planner.core.types import WorkerCapabilities
        from dynamo.planner.offline.replay_adapter import create_replay_planner_adapter
    except ImportError as error:
        raise UserError(f"Dynamo's Planner cannot be imported ({error}); {INSTALL_HINT}") from None
    # It logs every tick at INFO, and warns whenever a pool has a worker that has run no forward pass
    # since it started ("Worker count mismatch"; the tick is skipped, as in Dynamo's replay) and
    # that its offline registry accepts any caller: expected here, and they would bury eval tables.
    logging.getLogger("dynamo.planner").setLevel(logging.ERROR)
    config = PlannerConfig.from_config_arg(json.dumps(planner_config(scenario, target, load_interval_s)))
    config.advisory = True  # decisions go to the hook, as in the replay
    if scenario.topology.mode == "agg":
        capabilities = WorkerCapabilities(decode=_capabilities(scenario.engine, context_length_tokens))
    else:
        capabilities = WorkerCapabilities(
            prefill=_capabilities(scenario.engine_for("prefill"), context_length_tokens),
            decode=_capabilities(scenario.engine_for("decode"), context_length_tokens),
        )
    adapter = create_replay_planner_adapter(planner_config=config, capabilities=capabilities)
    adapter.set_bootstrap_metadata({"status": "load_only", "reason": "no AIS performance models"})
    return adapter


FPM_FIELDS = (
    "num_prefill_requests",
    "sum_prefill_tokens",
    "sum_prefill_kv_tokens",
    "num_decode_requests",
    "sum_decode_kv_tokens",
    "num_queued_prefill",
    "sum_queued_prefill_tokens",
    "num_queued_decode",
    "sum_queued_decode_kv_tokens",
)
# Variances the simulator does not keep; Dynamo's load-based Planner reads none of them.
FPM_VARIANCES = (
    "var_prefill_length",
    "var_decode_kv_tokens",
    "var_queued_prefill_length",
    "var_queued_decode_kv_tokens",
)


class DynamoPlannerPolicy:
    """Dynamo's own Planner (the replay's `ReplayPlannerAdapter`) as a policy of our simulator."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    def close(self) -> None:
        """Shut the Planner down (its engine and event loop); idempotent."""
        self.adapter.close()

    def initial_tick_s(self) -> float | None:
        return self.adapter.initial_tick_ms() / 1000.0

    def on_tick(self, snapshot: ScalingSnapshot) -> ScalingDecision:
        decision = self.adapter.on_tick(replay_snapshot(snapshot))
        next_ms = decision.get("next_tick_ms")
        return ScalingDecision(
            decision.get("target_prefill"),
            decision.get("target_decode"),
            None if next_ms is None else next_ms / 1000.0,
        )


def replay_snapshot(snapshot: ScalingSnapshot) -> dict[str, Any]:
    """Our snapshot as the replay's dict, for Dynamo's Planner."""
    result: dict[str, Any] = {"tick_ordinal": snapshot.tick, "now_ms": snapshot.now_s * 1000.0}
    for name, pool in (("prefill", snapshot.prefill), ("decode", snapshot.decode)):
        for state in ("active", "starting", "draining"):
            ids = list(getattr(pool, state))
            result[f"{state}_{name}_ids"] = ids
            result[f"{state}_{name}_count"] = len(ids)
        result[f"non_draining_{name}_count"] = pool.num_serving
        result[f"total_{name}_count"] = pool.num_serving + len(pool.draining)
        result[f"{name}_fpm_snapshots"] = [
            _fpm_dict(snapshot.passes[w]) for w in pool.active if w in snapshot.passes
        ]
    traffic = snapshot.traffic
    result["traffic"] = {
        "duration_s": traffic.duration_s,
        "num_req": traffic.num_requests,
        "avg_isl": traffic.mean_isl_tokens,
        "avg_osl": traffic.mean_osl_tokens,
        "avg_ttft_ms": traffic.mean_ttft_s * 1000.0,
        "avg_itl_ms": traffic.mean_itl_s * 1000.0,
        "shape_count": traffic.num_finished,
        "ttft_count": traffic.num_finished,
        "itl_count": traffic.num_finished,
        "avg_accept_length": None,
        "avg_kv_hit_rate": traffic.kv_hit_rate,
        "hit_rate_count": traffic.num_finished,
        "accept_length_forward_count": 0,
    }
    return result


def _fpm_dict(worker_pass: WorkerPass) -> dict[str, Any]:
    fpm: dict[str, Any] = {
        "worker_id": worker_pass.worker_id,
        "dp_rank": 0,
        "wall_time": worker_pass.wall_time_s,
    }
    fpm.update({name: getattr(worker_pass, name) for name in FPM_FIELDS})
    fpm.update(dict.fromkeys(FPM_VARIANCES, 0.0))
    return fpm


def planner_policy(scenario: ScenarioConfig, target: PlannerTarget = "throughput") -> DynamoPlannerPolicy:
    """A fresh Dynamo Planner for one episode of the scenario (close it after)."""
    return DynamoPlannerPolicy(dynamo_planner(scenario, target))
