"""Reproducibility: twin runs agree record for record; routing never changes the workload; a knob
change mid-run applies to the requests that arrive after it."""

from __future__ import annotations

import dataclasses

import pytest

from envs.sim.config import (
    EngineConfig,
    KvTransferConfig,
    RouterConfig,
    ScenarioConfig,
    TopologyConfig,
    WorkloadConfig,
)
from envs.sim.records import RequestRecord, Stage
from envs.sim.run import build_cluster, simulate

AGG = TopologyConfig(mode="agg", num_workers=3)
DISAGG = TopologyConfig(
    mode="disagg",
    num_prefill_workers=2,
    num_decode_workers=2,
    kv_transfer=KvTransferConfig(bandwidth_gbps=8.0),
)


def scenario(topology: TopologyConfig, router: RouterConfig, seed: int = 5, **workload) -> ScenarioConfig:
    base = {
        "arrival": "poisson",
        "rate_rps": 25.0,
        "num_requests": 300,
        "isl_tokens": 600,
        "osl_tokens": 24,
        "isl_jitter": 0.3,
        "osl_jitter": 0.3,
        "shared_prefix_ratio": 0.5,
        "num_prefix_groups": 3,
    }
    return ScenarioConfig(
        seed=seed,
        topology=topology,
        engine=EngineConfig(block_size=16, num_gpu_blocks=2048, max_num_seqs=16),
        router=router,
        workload=WorkloadConfig(**{**base, **workload}),
    )


def records_of(config: ScenarioConfig) -> tuple[RequestRecord, ...]:
    return tuple(sorted(simulate(config).records, key=lambda r: r.request_id))


def workload_of(records: tuple[RequestRecord, ...]) -> list[tuple]:
    return [
        (r.request_id, r.session_id, r.turn, r.arrival_s, r.input_tokens, r.output_tokens) for r in records
    ]


@pytest.mark.parametrize("topology", [AGG, DISAGG], ids=["agg", "disagg"])
def test_twin_runs_are_identical(topology):
    config = scenario(topology, RouterConfig(router_temperature=0.5))
    first, second = simulate(config), simulate(config)
    assert len(first.records) == 300
    assert first.records == second.records  # every field, every decision, in completion order
    assert first.sim_time_s == second.sim_time_s
    assert [s.pass_gaps_s for s in first.engine_stats] == [s.pass_gaps_s for s in second.engine_stats]
    # The runs were not trivially deterministic: the sampler did spread the load.
    assert len({r.prefill_worker for r in first.records}) == (3 if topology is AGG else 2)
    assert any(r.cached_tokens > 0 for r in first.records)


def test_different_seed_gives_different_records():
    a = records_of(scenario(AGG, RouterConfig(router_temperature=0.5), seed=5))
    b = records_of(scenario(AGG, RouterConfig(router_temperature=0.5), seed=6))
    assert a != b
    assert [r.arrival_s for r in a] != [r.arrival_s for r in b]
    assert [r.input_tokens for r in a] != [r.input_tokens for r in b]


@pytest.mark.parametrize("topology", [AGG, DISAGG], ids=["agg", "disagg"])
def test_router_knobs_do_not_change_the_workload(topology):
    routers = [
        RouterConfig(mode="kv"),
        RouterConfig(mode="kv", router_temperature=1.0, overlap_score_credit=0.2),
        RouterConfig(mode="round_robin"),
        RouterConfig(mode="random"),
    ]
    runs = [records_of(scenario(topology, router)) for router in routers]
    reference = workload_of(runs[0])
    for records in runs[1:]:
        assert workload_of(records) == reference
    # ... while the routing itself did differ.
    choices = {tuple(r.prefill_worker for r in records) for records in runs}
    assert len(choices) == len(routers)


def test_router_knobs_do_not_change_multi_turn_content():
    """Later turns arrive when earlier ones finish, so their times depend on routing; their
    lengths must not."""
    runs = [
        records_of(scenario(AGG, router, turns_per_session=3, inter_turn_delay_s=0.1, num_requests=150))
        for router in (RouterConfig(mode="kv"), RouterConfig(mode="round_robin"))
    ]
    contents = [
        sorted((r.session_id, r.turn, r.input_tokens, r.output_tokens) for r in recs) for recs in runs
    ]
    assert contents[0] == contents[1]
    assert sorted(r.arrival_s for r in runs[0] if r.turn == 0) == sorted(
        r.arrival_s for r in runs[1] if r.turn == 0
    )


OLD = {"overlap_score_credit": 1.0, "prefill_load_scale": 1.0, "router_temperature": 0.0}
NEW = {"overlap_score_credit": 0.25, "prefill_load_scale": 2.0, "router_temperature": 0.7}


def knobs_of(decision) -> dict[str, float]:
    return {name: getattr(decision, name) for name in OLD}


def run_with_override(config: ScenarioConfig, at_s: float) -> tuple[RequestRecord, ...]:
    cluster = build_cluster(config)
    cluster.env.run(until=at_s)
    cluster.set_router_override(NEW)
    cluster.env.run()
    return tuple(sorted(cluster.records, key=lambda r: r.request_id))


@pytest.mark.parametrize("topology", [AGG, DISAGG], ids=["agg", "disagg"])
def test_override_applies_to_later_requests_only(topology):
    config = scenario(topology, RouterConfig())
    baseline = records_of(config)
    at_s = baseline[150].arrival_s + 1e-6
    records = run_with_override(config, at_s)
    assert workload_of(records) == workload_of(baseline)
    for rec in records:
        first = rec.decisions[0]
        assert first.time_s == rec.arrival_s
        assert knobs_of(first) == (OLD if rec.arrival_s < at_s else NEW)
        if topology is DISAGG:
            assert first.stage == Stage.PREFILL
            assert rec.decisions[1].stage == Stage.DECODE
            assert rec.decisions[1].overlap_score_credit == 0.0  # forced by the frontend
    assert sum(r.arrival_s < at_s for r in records) == 151
    # The requests that finished before the change were served exactly as without it.
    untouched = [r for r in baseline if r.last_token_s < at_s]
    assert len(untouched) > 100
    by_id = {r.request_id: r for r in records}
    assert all(by_id[r.request_id] == r for r in untouched)


def test_override_does_not_reach_decode_stage_of_earlier_requests():
    config = scenario(DISAGG, RouterConfig())
    baseline = records_of(config)
    spanning = baseline[150]  # change the knobs while this request is in its prefill pass
    at_s = (spanning.arrival_s + spanning.prefill_end_s) / 2
    assert spanning.prefill_start_s < at_s < spanning.prefill_end_s
    records = run_with_override(config, at_s)
    for rec in records:
        expected = OLD if rec.arrival_s < at_s else NEW
        decode = rec.decisions[1]
        assert decode.router_temperature == expected["router_temperature"], (rec.request_id, decode)


def test_records_are_frozen():
    rec = records_of(scenario(AGG, RouterConfig(), num_requests=2))[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.arrival_s = 1.0  # type: ignore[misc]
