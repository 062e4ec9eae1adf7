"""P/D moves in the simulator: start-up delays, draining, the budget, and no request lost.

Oracles: the replay's rules stated by hand (a new worker serves from startup_s on; the drained
worker is the highest-numbered one and takes nothing after the move; draining a worker that is
still starting removes it at once), conservation (every request finishes exactly once, on a
worker that was serving when it was routed), and the budget rule. Dynamo's replay itself is the
reference in tests/test_dynamo_crosscheck.py.
"""

from __future__ import annotations

import pytest

from envs.sim.config import (
    EngineConfig,
    KvTransferConfig,
    ScaleStep,
    ScalingConfig,
    ScenarioConfig,
    TopologyConfig,
    WorkloadConfig,
)
from envs.sim.run import build_cluster, simulate
from envs.sim.scaling import ScalingDecision, ScalingSnapshot

MOVE_S, STARTUP_S = 4.0, 2.0


def scenario(**scaling) -> ScenarioConfig:
    return ScenarioConfig(
        seed=2,
        topology=TopologyConfig(
            mode="disagg",
            num_prefill_workers=1,
            num_decode_workers=3,
            kv_transfer=KvTransferConfig(bandwidth_gbps=32.0),
        ),
        engine=EngineConfig(block_size=16, num_gpu_blocks=4096),
        workload=WorkloadConfig(rate_rps=30.0, num_requests=400, isl_tokens=1500, osl_tokens=20),
        scaling=ScalingConfig(**scaling),
    )


def test_a_move_starts_a_worker_after_its_startup_and_drains_the_highest():
    steps = (ScaleStep(at_s=MOVE_S, num_prefill=2, num_decode=2),)
    result = simulate(scenario(startup_s=STARTUP_S, max_workers=4, schedule=steps))
    records = result.records
    assert sorted(r.request_id for r in records) == list(range(400))  # none lost in the drain
    new_prefill, drained = 4, 3  # ids: 0 prefill, 1-3 decode, then the new prefill worker
    prefill_times = [r.decisions[0].time_s for r in records if r.prefill_worker == new_prefill]
    assert prefill_times and min(prefill_times) >= MOVE_S + STARTUP_S
    decode_times = [r.decisions[1].time_s for r in records if r.decode_worker == drained]
    assert decode_times and max(decode_times) < MOVE_S  # nothing routed there after the move
    assert {r.decode_worker for r in records if r.decisions[1].time_s >= MOVE_S} == {1, 2}


class Recorder:
    """Moves at given ticks and keeps every snapshot."""

    def __init__(self, moves: dict[int, tuple[int, int]]) -> None:
        self.moves, self.snapshots = moves, []

    def initial_tick_s(self) -> float:
        return 1.0

    def on_tick(self, snapshot: ScalingSnapshot) -> ScalingDecision:
        self.snapshots.append(snapshot)
        prefill, decode = self.moves.get(snapshot.tick, (None, None))
        return ScalingDecision(prefill, decode, snapshot.now_s + 1.0 if snapshot.now_s < 9 else None)


def test_snapshots_show_starting_active_and_draining_workers():
    cluster = build_cluster(scenario(startup_s=2.5))
    policy = Recorder({2: (2, 2)})  # decided at 3 s
    cluster.scaler.run(policy)
    cluster.env.run()
    by_time = {s.now_s: s for s in policy.snapshots}
    assert by_time[3.0].prefill.active == (0,) and by_time[3.0].decode.active == (1, 2, 3)
    assert by_time[4.0].prefill.starting == (4,) and by_time[4.0].decode.active == (1, 2)
    assert 3 in by_time[4.0].decode.draining or 3 not in by_time[4.0].decode.active
    assert by_time[6.0].prefill.active == (0, 4) and by_time[6.0].prefill.starting == ()
    assert set(by_time[6.0].passes) == {0, 4, 1, 2}  # the active workers' last passes
    assert sum(s.traffic.num_requests for s in policy.snapshots) <= 400


def test_draining_a_starting_worker_removes_it_at_once():
    cluster = build_cluster(scenario(startup_s=5.0))
    cluster.scaler.scale_to(2, None)
    assert cluster.scaler.view("prefill").starting == (4,)
    cluster.scaler.scale_to(1, None)
    view = cluster.scaler.view("prefill")
    assert view.starting == () and view.draining == () and view.active == (0,)
    cluster.env.run()
    assert all(r.prefill_worker == 0 for r in cluster.records)


@pytest.mark.parametrize(
    ("prefill", "decode", "message"),
    [(3, 2, "over scaling.max_workers"), (0, 4, "must be >= 1"), (None, 5, "over scaling.max_workers")],
)
def test_bad_targets_are_refused_with_the_rule(prefill, decode, message):
    cluster = build_cluster(scenario(max_workers=4))
    with pytest.raises(ValueError, match=message):
        cluster.scaler.scale_to(prefill, decode)


def test_a_schedule_out_of_order_or_a_budget_below_the_topology_is_a_config_error():
    with pytest.raises(ValueError, match="increasing at_s"):
        ScalingConfig(schedule=(ScaleStep(at_s=2.0, num_decode=2), ScaleStep(at_s=1.0, num_decode=3)))
    with pytest.raises(ValueError, match="below the topology's 4 workers"):
        scenario(max_workers=3)


def test_an_aggregated_deployment_scales_its_one_pool():
    base = scenario()
    agg = ScenarioConfig(
        seed=1,
        topology=TopologyConfig(mode="agg", num_workers=2),
        engine=base.engine,
        workload=base.workload,
        scaling=ScalingConfig(schedule=(ScaleStep(at_s=3.0, num_decode=3),)),
    )
    records = simulate(agg).records
    assert len(records) == 400 and 2 in {r.prefill_worker for r in records}
    with pytest.raises(ValueError, match="no prefill pool"):
        build_cluster(agg).scaler.scale_to(2, None)
