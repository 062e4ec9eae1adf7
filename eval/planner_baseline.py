"""Dynamo's own Planner as a P/D baseline: the shipped planner code (`dynamo.planner`), built the
way Dynamo's replay builds it, driving our simulator or Dynamo's replay through the same hook.

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
    logging.getLogger("dynamo.planner").setLevel(logging.WARNING)  # it logs every tick at INFO
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
