"""P/D moves across the two simulators: our scaling policies inside Dynamo's replay, and Dynamo's
own Planner inside our simulator, both through the replay's scaling hook.

The hook's contract (`dynamo._core.run_mocker_trace_replay(..., scaling_policy=obj)`, the object
Dynamo's `ReplayPlannerAdapter` implements): `initial_tick_ms()` once, then `on_tick(snapshot)`
with a dict of the pools' ids, each worker's ForwardPassMetrics and the traffic since the last
tick, answered by `{"target_prefill", "target_decode", "next_tick_ms"}`. An aggregated
deployment's one pool is the decode pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.sim.scaling import (
    PoolView,
    ScalingDecision,
    ScalingPolicy,
    ScalingSnapshot,
    TrafficWindow,
    WorkerPass,
)

_FPM_FIELDS = (
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
_FPM_VARIANCES = (
    "var_prefill_length",
    "var_decode_kv_tokens",
    "var_queued_prefill_length",
    "var_queued_decode_kv_tokens",
)


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


class DynamoPlannerPolicy:
    """Dynamo's own Planner (the replay's `ReplayPlannerAdapter`) as a policy of our simulator."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

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
            passes[worker] = WorkerPass(worker, fpm["wall_time"], *(int(fpm[f]) for f in _FPM_FIELDS))
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
    fpm.update({name: getattr(worker_pass, name) for name in _FPM_FIELDS})
    fpm.update(dict.fromkeys(_FPM_VARIANCES, 0.0))
    return fpm
