"""Our scaling policies inside Dynamo's replay, through its scaling hook (the other way, Dynamo's
Planner inside our simulator, is `agents.planner.DynamoPlannerPolicy`).

The hook's contract (`dynamo._core.run_mocker_trace_replay(..., scaling_policy=obj)`, the object
Dynamo's `ReplayPlannerAdapter` implements): `initial_tick_ms()` once, then `on_tick(snapshot)`
with a dict of the pools' ids, each worker's ForwardPassMetrics and the traffic since the last
tick, answered by `{"target_prefill", "target_decode", "next_tick_ms"}`. An aggregated
deployment's one pool is the decode pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.planner import FPM_FIELDS
from envs.sim.scaling import PoolView, ScalingPolicy, ScalingSnapshot, TrafficWindow, WorkerPass


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


class ReplayScalingBridge:
    """One of our `ScalingPolicy`s, driven by Dynamo's replay."""

    def __init__(self, policy: ScalingPolicy) -> None:
        self.policy = policy

    def initial_tick_ms(self) -> float:
        first_s = self.policy.initial_tick_s()
        # The replay needs a first tick; a policy without one ticks once, past any trace, and stops.
        return 1e15 if first_s is None else first_s * 1000.0

    def on_tick(self, result: Mapping[str, Any]) -> dict[str, Any]:
        decision = self.policy.on_tick(snapshot_from_replay(result))
        return {
            "target_prefill": decision.num_prefill,
            "target_decode": decision.num_decode,
            "next_tick_ms": _ms(decision.next_tick_s),
        }


def snapshot_from_replay(result: Mapping[str, Any]) -> ScalingSnapshot:
    """The replay's snapshot dict in our types (its worker ids are per pool: prefill ids are
    offset past the decode ids so the two never collide)."""
    offset = 1 + max([*result["active_decode_ids"], *result.get("starting_decode_ids", []), 0])

    def pool(name: str, shift: int) -> PoolView:
        return PoolView(
            tuple(w + shift for w in result[f"active_{name}_ids"]),
            tuple(w + shift for w in result.get(f"starting_{name}_ids", [])),
            tuple(w + shift for w in result.get(f"draining_{name}_ids", [])),
        )

    passes: dict[int, WorkerPass] = {}
    for name, shift in (("decode", 0), ("prefill", offset)):
        for fpm in result.get(f"{name}_fpm_snapshots", []):
            worker = int(fpm["worker_id"]) + shift
            passes[worker] = WorkerPass(worker, fpm["wall_time"], *(int(fpm[f]) for f in FPM_FIELDS))
    traffic = result.get("traffic") or {}
    return ScalingSnapshot(
        tick=int(result["tick_ordinal"]),
        now_s=result["now_ms"] / 1000.0,
        prefill=pool("prefill", offset),
        decode=pool("decode", 0),
        passes=passes,
        traffic=TrafficWindow(
            duration_s=traffic.get("duration_s", 0.0),
            num_requests=int(traffic.get("num_req", 0)),
            num_finished=int(traffic.get("shape_count", 0)),
            mean_isl_tokens=traffic.get("avg_isl", 0.0),
            mean_osl_tokens=traffic.get("avg_osl", 0.0),
            mean_ttft_s=traffic.get("avg_ttft_ms", 0.0) / 1000.0,
            mean_itl_s=traffic.get("avg_itl_ms", 0.0) / 1000.0,
            kv_hit_rate=traffic.get("avg_kv_hit_rate") or 0.0,
        ),
    )
