"""KV cache tiers (G2 host, G3 disk): residency invariants, LRU, onboarding time, routing credit.

Hand values use block size 16 and the default model (131072 KV bytes per token), so a block is
16 x 131072 = 2,097,152 bytes and takes 2,097,152 / 14e9 s = 149.796571 us on a 14 GB/s link.
"""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from pydantic import ValidationError

from envs.sim.config import (
    EngineConfig,
    KvTiersConfig,
    RouterConfig,
    ScenarioConfig,
    TimingConfig,
    TopologyConfig,
    WorkloadConfig,
)
from envs.sim.engine import Engine
from envs.sim.knobs import Knobs
from envs.sim.kv_tiers import KvTiers
from envs.sim.metrics import summarize
from envs.sim.records import Stage
from envs.sim.router import Router, WorkerLoad, kv_costs
from envs.sim.run import build_cluster, simulate
from envs.sim.sequence import Sequence
from envs.sim.timing import make_timing

B = 16
BLOCK_BYTES = B * 131072
S_PER_BLOCK_14 = BLOCK_BYTES / 14e9


def prefill_ms(tokens: int) -> float:
    return 4.209989e-7 * tokens**2 + 1.518344e-2 * tokens + 16.50142


def check_tier_invariants(tiers: KvTiers) -> None:
    for tier in (tiers.host, tiers.disk):
        if tier is None:
            continue
        assert not set(tier.resident) & tier.pending  # one place per block per tier
        assert len(tier.resident) + len(tier.pending) <= tier.capacity_blocks
        assert len(tier.pending) == len(tier._writes)


def test_random_walk_keeps_every_block_in_one_place_and_within_capacity():
    rng = np.random.default_rng(7)
    tiers = KvTiers(KvTiersConfig(host_blocks=20, disk_blocks=50), BLOCK_BYTES)
    now_s = 0.0
    for _ in range(3000):
        now_s += float(rng.exponential(S_PER_BLOCK_14 * 2))
        op = rng.integers(3)
        hashes = [int(h) for h in rng.integers(0, 120, size=int(rng.integers(1, 8)))]
        if op == 0:
            tiers.offload(hashes, now_s)
        elif op == 1:
            num_host, num_disk = tiers.match(hashes, 0, len(hashes), now_s)
            assert num_host + num_disk <= len(hashes)
            assert all(h in tiers.host.resident for h in hashes[:num_host])
            assert all(h in tiers.disk.resident for h in hashes[num_host : num_host + num_disk])
            assert tiers.onboard(hashes, 0, num_host, num_disk, now_s) >= now_s
        else:
            tiers.advance(now_s)
        check_tier_invariants(tiers)
    assert tiers.disk.resident  # write-through reached G3


def test_g1_accounting_is_whole_after_a_run_with_tiers():
    engine = EngineConfig(block_size=B, num_gpu_blocks=768, kv_tiers=KvTiersConfig(host_blocks=4000))
    result_engines = _cluster_run(engine)
    for e in result_engines:
        assert e.pool.num_free + len(e.pool._inactive) == e.pool.num_blocks  # nothing leaked
        assert not e.pool._refcount
        check_tier_invariants(e.tiers)


def _cluster_run(engine: EngineConfig):
    cluster = build_cluster(_multiturn(engine, 200))
    cluster.env.run()
    assert len(cluster.records) == 200
    return cluster.engines


def test_g2_evicts_least_recently_used_and_hits_refresh_recency():
    tiers = KvTiers(KvTiersConfig(host_blocks=3, host_offload_gbps=0, host_onboard_gbps=0), BLOCK_BYTES)
    tiers.offload([1, 2, 3], 0.0)
    tiers.advance(0.0)
    assert list(tiers.host.resident) == [1, 2, 3]
    assert tiers.match([1, 2], 0, 2, 0.0) == (2, 0)
    tiers.onboard([1, 2], 0, 2, 0, 0.0)  # touched in reverse: 1 (the shared head) ends up newest
    assert list(tiers.host.resident) == [3, 2, 1]
    tiers.offload([4], 0.0)
    tiers.advance(0.0)
    assert list(tiers.host.resident) == [2, 1, 4]  # 3 was least recently used


def test_write_becomes_visible_when_it_finishes_and_links_are_fifo():
    tiers = KvTiers(KvTiersConfig(host_blocks=10, host_offload_gbps=14), BLOCK_BYTES)
    tiers.offload([1, 2], 0.0)
    assert tiers.match([1, 2], 0, 2, S_PER_BLOCK_14 * 0.99) == (0, 0)
    assert tiers.match([1, 2], 0, 2, S_PER_BLOCK_14 * 1.01) == (1, 0)
    assert tiers.match([1, 2], 0, 2, S_PER_BLOCK_14 * 2.01) == (2, 0)


def test_onboarding_delay_of_a_prefix_evicted_from_g1_but_in_g2():
    """C re-sends A's 1000-token prompt after B (1024 tokens) evicted all of A's blocks from a
    64-block G1. A's 62 full blocks are in G2, so C onboards 62 blocks and prefills 8 tokens:
    TTFT = 62 x 149.796571 us + prefill_ms(8) = 9.287387 ms + 16.623156 ms."""
    env = simpy.Environment()
    firsts: dict[int, float] = {}
    config = EngineConfig(
        block_size=B, num_gpu_blocks=64, max_num_seqs=4, kv_tiers=KvTiersConfig(host_blocks=1000)
    )
    engine = Engine(
        env, 0, "agg", config, make_timing(TimingConfig()),
        lambda seq, t: firsts.__setitem__(seq.request_id, t), lambda seq, t: None, 131072.0,
    )  # fmt: skip
    prompt_a = tuple(range(1000, 1062))  # 62 full blocks of a 1000-token prompt
    prompt_b = tuple(range(2000, 2064))
    engine.submit(Sequence(0, 1000, 1, prompt_a))
    env.run(until=1.0)
    engine.submit(Sequence(1, 1024, 1, prompt_b))
    env.run(until=2.0)
    assert engine.pool.match_prefix(prompt_a, 62) == 0  # evicted from G1
    seq_c = Sequence(2, 1000, 1, prompt_a)
    engine.submit(seq_c)
    env.run(until=3.0)
    ttft_s = firsts[2] - 2.0
    expected_s = 62 * BLOCK_BYTES / 14e9 + prefill_ms(8) / 1000
    assert ttft_s == pytest.approx(expected_s, abs=1e-9)
    assert seq_c.reused_tokens == 992 and seq_c.host_hit_tokens == 992 and seq_c.disk_hit_tokens == 0


def _multiturn(engine: EngineConfig, num_requests: int = 400) -> ScenarioConfig:
    workload = WorkloadConfig(
        arrival="closed_loop", concurrency=4, num_requests=num_requests, isl_tokens=1024,
        osl_tokens=32, turns_per_session=4, shared_prefix_ratio=0.5, num_prefix_groups=4,
    )  # fmt: skip
    return ScenarioConfig(engine=engine, workload=workload, topology=TopologyConfig(num_workers=1), seed=1)


def test_zero_capacity_tiers_give_records_identical_to_the_default():
    engine = EngineConfig(block_size=B, num_gpu_blocks=768)
    off = EngineConfig(
        block_size=B, num_gpu_blocks=768,
        kv_tiers=KvTiersConfig(host_blocks=0, host_offload_gbps=1, host_onboard_gbps=2),
    )  # fmt: skip
    base = simulate(_multiturn(engine))
    twin = simulate(_multiturn(off))
    assert base.records == twin.records
    assert base.engine_stats == twin.engine_stats


def test_g2_holding_the_working_set_raises_reuse_and_lowers_ttft():
    small_g1 = EngineConfig(block_size=B, num_gpu_blocks=768)
    with_g2 = EngineConfig(block_size=B, num_gpu_blocks=768, kv_tiers=KvTiersConfig(host_blocks=20000))
    base = simulate(_multiturn(small_g1))
    tiered = simulate(_multiturn(with_g2))
    s0, s1 = summarize(base.records, base.engine_stats), summarize(tiered.records, tiered.engine_stats)
    assert all(r.host_cached_tokens == 0 for r in base.records)
    assert sum(r.host_cached_tokens for r in tiered.records) > 0
    assert all(r.host_cached_tokens + r.disk_cached_tokens <= r.cached_tokens for r in tiered.records)
    assert s1.prefix_reuse_ratio > s0.prefix_reuse_ratio
    assert s1.ttft_mean_s < s0.ttft_mean_s


def test_disk_tier_serves_what_g2_evicted():
    engine = EngineConfig(
        block_size=B, num_gpu_blocks=768, kv_tiers=KvTiersConfig(host_blocks=1000, disk_blocks=20000)
    )
    records = simulate(_multiturn(engine)).records
    assert sum(r.disk_cached_tokens for r in records) > 0


def test_router_cost_credits_host_and_disk_overlap():
    """The test_router worked example plus (host, disk) continuations (4, 2), (10, 0), (0, 8):
    W0 = 57.5 - (20 + 0.75*4 + 0.25*2) + 86 = 120.0
    W1 = 26.25 - (0 + 0.75*10) + 66        = 84.75
    W2 = 88.75 - (10 + 0.25*8) + 86        = 162.75"""
    loads = [
        WorkerLoad(active_prefill_tokens=500, active_requests=2, anonymous_blocks=60),
        WorkerLoad(active_prefill_tokens=0, active_requests=1, anonymous_blocks=40),
        WorkerLoad(active_prefill_tokens=1000, active_requests=3, anonymous_blocks=70),
    ]
    config = RouterConfig()
    costs = kv_costs(loads, [20, 0, 10], [26, 26, 16], 420, B, Knobs(), config, [(4, 2), (10, 0), (0, 8)])
    assert costs == pytest.approx([120.0, 84.75, 162.75], abs=1e-12)


def test_router_asks_the_tier_oracle_beyond_the_device_match():
    asked: list[tuple[int, int, int]] = []

    def tier_oracle(worker: int, hashes: tuple[int, ...], start: int, limit: int) -> tuple[int, int]:
        asked.append((worker, start, limit))
        return (8, 0) if worker == 1 else (0, 0)

    router = Router(
        RouterConfig(), Stage.AGG, [0, 1], B, lambda w, h, n: 2 if w == 0 else 0, np.random.default_rng(0)
    )
    router.set_tier_overlap(tier_oracle)
    decision = router.route(0, 160, tuple(range(10)), Knobs(), 0.0)
    assert asked == [(0, 2, 10), (1, 0, 10)]
    # W0: 10 - 2 + 10 = 18; W1: 10 - 0.75*8 + 10 = 14 -> W1.
    assert decision.costs == pytest.approx((18.0, 14.0)) and decision.chosen == 1


def test_config_rules_name_the_fields():
    with pytest.raises(ValidationError, match=r"kv_tiers.disk_blocks > 0 needs kv_tiers.host_blocks > 0"):
        KvTiersConfig(disk_blocks=10)
    with pytest.raises(ValidationError):
        KvTiersConfig(host_offload_gbps=-1)
    with pytest.warns(UserWarning, match=r"kv_tiers.disk_blocks \(10\) < kv_tiers.host_blocks \(20\)"):
        KvTiersConfig(host_blocks=20, disk_blocks=10)
    with pytest.warns(UserWarning, match=r"kv_tiers.host_blocks \(10\) < num_gpu_blocks \(64\)"):
        EngineConfig(num_gpu_blocks=64, kv_tiers=KvTiersConfig(host_blocks=10))
