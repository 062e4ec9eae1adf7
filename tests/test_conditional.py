"""Dynamo's conditional disaggregation: the policies by hand, and in a cluster who bypasses the
prefill pool and how the bypassed request runs.

Oracles: Dynamo's rules stated by hand (strict comparisons; effective ISL from the decode worker's
cached prefix; the prefill-load probe; the decode guard), conservation (every request finishes
once, no block is left held), and the records' own routes: a bypassed request is prefilled and
decoded on one decode worker, routed once, by the decode router with its full knobs. No reference
system runs it here: Dynamo's replay has no bypass and the mocker's decode workers publish no KV
events (envs/sim/conditional.py).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from envs.sim.conditional import ConditionalDisaggConfig, bypasses, isl_bounded
from envs.sim.config import EngineConfig, RouterConfig, ScenarioConfig, TopologyConfig, WorkloadConfig
from envs.sim.records import Stage
from envs.sim.run import build_cluster


def test_isl_bounding_is_strict_on_both_thresholds():
    config = ConditionalDisaggConfig(eff_isl_threshold=100, eff_isl_ratio_threshold=0.5)
    assert isl_bounded(config, 1000, 901)  # 99 left: < 100, and 0.099 < 0.5
    assert not isl_bounded(config, 1000, 900)  # 100 left: not < 100
    assert not isl_bounded(config, 180, 90)  # 90 left but 0.5 of the prompt: not < 0.5
    assert isl_bounded(config, 180, 91)
    assert not isl_bounded(ConditionalDisaggConfig(), 100, 0)  # nothing cached: ratio 1
    assert isl_bounded(ConditionalDisaggConfig(), 100, 500)  # more cached than asked: 0 left


def test_the_policies_combine_the_tests_and_the_guard_vetoes():
    load = ConditionalDisaggConfig(policy="prefill_load", prefill_busy_threshold=1.0)
    either = ConditionalDisaggConfig(policy="isl_or_load", prefill_busy_threshold=1.0)
    assert bypasses(load, 1000, 0, prefill_busy=True, decode_over_guard=False)
    assert not bypasses(load, 1000, 999, prefill_busy=False, decode_over_guard=False)
    assert bypasses(either, 1000, 999, prefill_busy=False, decode_over_guard=False)
    assert bypasses(either, 1000, 0, prefill_busy=True, decode_over_guard=False)
    assert not bypasses(either, 1000, 999, prefill_busy=True, decode_over_guard=True)


def scenario(conditional: dict | None, rate_rps: float = 40.0, **router) -> ScenarioConfig:
    return ScenarioConfig(
        seed=7,
        topology=TopologyConfig(mode="disagg", num_prefill_workers=1, num_decode_workers=2),
        engine=EngineConfig(block_size=16, num_gpu_blocks=4096),
        router=RouterConfig(
            conditional_disagg=None if conditional is None else ConditionalDisaggConfig(**conditional),
            **router,
        ),
        workload=WorkloadConfig(
            rate_rps=rate_rps,
            num_requests=300,
            isl_tokens=128,
            osl_tokens=8,
            shared_prefix_ratio=0.75,
            num_prefix_groups=2,
        ),
    )


def run(config: ScenarioConfig):
    cluster = build_cluster(config)
    cluster.env.run()
    assert sorted(r.request_id for r in cluster.records) == list(range(300))  # each once
    assert all(engine.pool.num_active == 0 for engine in cluster.engines)  # nothing left held
    return cluster


def test_a_cached_prefix_on_a_decode_worker_sends_the_request_there_whole():
    cluster = run(scenario({}))  # isl_bounding: 128-token prompts, 96 of them shared
    decode_workers = set(cluster.decode_router.workers)
    local = [r for r in cluster.records if r.prefill_worker in decode_workers]
    assert len(local) == cluster.conditional.num_bypassed > 250  # once the prefixes are cached
    for record in local:
        (decision,) = record.decisions  # routed once, by the decode router with the full knobs
        assert decision.stage == Stage.DECODE and decision.overlap_score_credit == 1.0
        assert record.decode_worker == record.prefill_worker and record.cached_tokens >= 96
        assert record.transfer_end_s == record.prefill_end_s  # no KV moves
    # The disaggregated ones: their decode leg keeps the credit when conditional disagg is on.
    remote = [r for r in cluster.records if r.prefill_worker not in decode_workers]
    assert remote and all(r.decisions[1].overlap_score_credit == 1.0 for r in remote)
    off = run(scenario(None))
    assert all(r.decisions[1].overlap_score_credit == 0.0 for r in off.records)  # load-only


def test_prefill_load_bypasses_only_while_the_prefill_worker_is_busy():
    light = run(scenario({"policy": "prefill_load", "prefill_busy_threshold": 0.5}, rate_rps=5.0))
    assert light.conditional.num_bypassed == 0  # one 128-token prompt at a time: never 1024 booked
    heavy = run(scenario({"policy": "prefill_load", "prefill_busy_threshold": 0.0}, rate_rps=400.0))
    assert heavy.conditional.num_bypassed > 30  # threshold 0: busy whenever a prompt is booked


def test_the_decode_guard_at_zero_blocks_every_bypass():
    cluster = run(scenario({"decode_busy_threshold": 0.0}))
    assert cluster.conditional.num_bypassed == 0


def test_bad_conditional_settings_are_named():
    with pytest.raises(ValidationError, match="needs a prefill busy threshold"):
        RouterConfig(conditional_disagg=ConditionalDisaggConfig(policy="prefill_load"))
    RouterConfig(conditional_disagg=ConditionalDisaggConfig(policy="isl_or_load"), router_queue_threshold=1.0)
    with pytest.raises(ValidationError, match="eff_isl_ratio_threshold"):
        ConditionalDisaggConfig(eff_isl_ratio_threshold=1.5)
    with pytest.raises(ValidationError, match="needs a disaggregated topology"):
        ScenarioConfig(duration_s=1.0, router=RouterConfig(conditional_disagg=ConditionalDisaggConfig()))
    with pytest.raises(ValidationError, match=r"Dynamo v0\.9 has no such knob"):
        RouterConfig(router_semantics="dynamo-0.9", conditional_disagg=ConditionalDisaggConfig())
