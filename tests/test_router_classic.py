"""SGLang's cache-aware router and llm-d's default scorers, checked against hand-computed picks.

The worked examples use block size 16 and a 320-token prompt (20 blocks), so a cached prefix of
k blocks has match rate k x 16 / 320 = k / 20 and llm-d prefix score k / 20.

llm-d example (default weights: prefix 3, KV utilisation 2, queue 2):

    worker  overlap  prefix  waiting  queue (max 8, min 0)  KV usage  KV score  3p + 2k + 2q
    W0      10       0.5     4        (8 - 4) / 8 = 0.5     0.5       0.5       1.5 + 1.0 + 1.0 = 3.5
    W1      20       1.0     8        0                     0.9       0.1       3.0 + 0.2 + 0.0 = 3.2
    W2      0        0.0     0        1                     0.1       0.9       0.0 + 1.8 + 2.0 = 3.8
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_router import cached_pools

from agents.policy_spec import parse_policies
from envs.sim.config import (
    EngineConfig,
    KvTransferConfig,
    RouterConfig,
    ScenarioConfig,
    TopologyConfig,
    WorkloadConfig,
)
from envs.sim.knobs import Knobs
from envs.sim.kv_cache import BlockPool
from envs.sim.records import RequestRecord, Stage
from envs.sim.router import Router
from envs.sim.router_classic import (
    ClassicRouting,
    EngineMetrics,
    cache_aware_select,
    is_imbalanced,
    llm_d_scores,
)
from envs.sim.run import build_cluster, simulate

B = 16
ISL = 320  # 20 blocks
SGLANG = RouterConfig(mode="cache_aware")
LEGACY_SGLANG = RouterConfig(mode="cache_aware", sglang_miss_fallback="smallest_tree")
LLM_D = RouterConfig(mode="llm_d")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- configuration ----------------------------------------------------------------------------


def test_defaults_are_the_upstream_ones():
    # sgl-model-gateway/src/main.rs and router_args.py; llm-d's pkg/epp/config/loader/defaults.go.
    config = RouterConfig()
    assert (config.sglang_cache_threshold, config.sglang_balance_abs_threshold) == (0.3, 64)
    assert (config.sglang_balance_rel_threshold, config.sglang_miss_fallback) == (1.5, "min_load")
    weights = (config.llm_d_prefix_weight, config.llm_d_kv_utilization_weight, config.llm_d_queue_weight)
    assert weights == (3.0, 2.0, 2.0)


@pytest.mark.parametrize(
    "field",
    [
        {"sglang_cache_threshold": 1.2},
        {"sglang_cache_threshold": -0.1},
        {"sglang_balance_rel_threshold": 0.9},  # SGLang's validation: >= 1
        {"sglang_balance_abs_threshold": -1},
        {"sglang_miss_fallback": "random"},
        {"llm_d_queue_weight": -1.0},
        {"llm_d_prefix_weight": math.inf},
    ],
)
def test_config_rejects_out_of_range_values(field):
    with pytest.raises(ValueError):
        RouterConfig(mode="cache_aware", **field)


def test_policy_names_map_to_the_modes():
    specs = parse_policies("cache_aware,llm_d")
    assert [(s.name, s.kind, s.overrides) for s in specs] == [
        ("cache_aware", "baseline", ("router.mode=cache_aware",)),
        ("llm_d", "baseline", ("router.mode=llm_d",)),
    ]


# -- SGLang cache_aware -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        ([0, 65], True),  # 65 > 64 and 65 > 0 x 1.5
        ([0, 64], False),  # the absolute gap is not above 64
        ([100, 165], True),  # 65 > 64 and 165 > 150
        ([140, 205], False),  # 65 > 64 but 205 <= 210
        ([3, 3, 3], False),
    ],
)
def test_imbalance_needs_both_gaps(in_flight, expected):
    assert is_imbalanced(in_flight, 64, 1.5) is expected


def test_balanced_load_goes_to_the_best_prefix():
    # Loads 5, 9, 2 are balanced (gap 7); rates 4/20, 12/20, 0 and 0.6 > 0.3: W1 despite load.
    index, costs = cache_aware_select([5, 9, 2], [4, 12, 0], ISL, B, [0, 0, 0], SGLANG, rng())
    assert index == 1
    assert costs == pytest.approx([-0.2, -0.6, 0.0], abs=1e-12)


def test_imbalance_beyond_both_thresholds_goes_to_the_least_loaded():
    # W0 holds the whole prompt, but 70 - 3 = 67 > 64 and 70 > 3 x 1.5: shortest queue, W1.
    index, costs = cache_aware_select([70, 3, 5], [20, 0, 0], ISL, B, [0, 0, 0], SGLANG, rng())
    assert (index, costs) == (1, [70.0, 3.0, 5.0])
    # One request less on W0 and the gap is 64, not above it: balanced, so the cache hit wins.
    index, _ = cache_aware_select([67, 3, 5], [20, 0, 0], ISL, B, [0, 0, 0], SGLANG, rng())
    assert index == 0


def test_miss_goes_to_the_first_least_loaded_worker():
    # Best rate 6/20 = 0.3 is not above the threshold 0.3: a miss. W1 and W2 tie at 2 in-flight
    # requests and Rust's min_by_key keeps the first, whatever the random stream.
    for seed in range(20):
        index, costs = cache_aware_select([5, 2, 2], [6, 2, 0], ISL, B, [0, 0, 0], SGLANG, rng(seed))
        assert (index, costs) == (1, [5.0, 2.0, 2.0])


def test_miss_goes_to_the_smallest_tree_under_the_legacy_rule():
    # A miss (best rate 0.1) ignores load (W1 has the most) and takes the smallest tree.
    index, costs = cache_aware_select([0, 9, 0], [2, 0, 0], ISL, B, [50, 20, 35], LEGACY_SGLANG, rng())
    assert (index, costs) == (1, [50.0, 20.0, 35.0])


def test_cache_hit_ties_break_at_random_and_reproducibly():
    # W0 and W1 hold the same 12 blocks (rate 0.6): each wins about half; W2 never does.
    def picks(seed: int) -> list[int]:
        stream = rng(seed)
        ties = ([0, 0, 0], [12, 12, 0], ISL, B, [0, 0, 0], SGLANG, stream)
        return [cache_aware_select(*ties)[0] for _ in range(4000)]

    first = picks(3)
    assert first == picks(3)
    counts = np.bincount(first, minlength=3)
    assert counts[2] == 0
    # Binomial(4000, 1/2): standard deviation 31.6; allow 5 of them.
    assert abs(counts[0] - 2000) <= 5 * math.sqrt(4000 * 0.25)


# -- llm-d ------------------------------------------------------------------------------------

EXAMPLE_METRICS = [EngineMetrics(4, 0.5), EngineMetrics(8, 0.9), EngineMetrics(0, 0.1)]


def test_llm_d_worked_example():
    scores = llm_d_scores([10, 20, 0], ISL, B, EXAMPLE_METRICS, LLM_D)
    assert scores == pytest.approx([3.5, 3.2, 3.8], abs=1e-12)
    # A prefix weight of 5 turns it round: W0 2.5 + 1 + 1 = 4.5, W1 5 + 0.2 + 0 = 5.2, W2 3.8.
    heavier = RouterConfig(mode="llm_d", llm_d_prefix_weight=5.0)
    assert llm_d_scores([10, 20, 0], ISL, B, EXAMPLE_METRICS, heavier) == pytest.approx([4.5, 5.2, 3.8])


def test_llm_d_equal_queues_score_one_each():
    # Queues 3 and 3: 1 on both. W0 = 0 + 2 x 0.8 + 2 = 3.6; W1 = 3 x 0.5 + 1.6 + 2 = 5.1.
    metrics = [EngineMetrics(3, 0.2), EngineMetrics(3, 0.2)]
    assert llm_d_scores([0, 10], ISL, B, metrics, LLM_D) == pytest.approx([3.6, 5.1], abs=1e-12)


def test_llm_d_prefix_counts_at_most_256_blocks():
    # A 300-block prompt: 280 cached blocks score min(280, 256) / 256 = 1; 128 score 0.5.
    metrics = [EngineMetrics(0, 0.0), EngineMetrics(0, 0.0)]
    scores = llm_d_scores([280, 128], 300 * B, B, metrics, LLM_D)
    assert scores == pytest.approx([3.0 + 2.0 + 2.0, 1.5 + 2.0 + 2.0], abs=1e-12)


# -- the Router in the classic modes ------------------------------------------------------------


def prompt(tag: int, n: int = 20) -> tuple[int, ...]:
    return tuple(tag * 1000 + j for j in range(n))


def make_router(pools: list[BlockPool], config: RouterConfig, seed: int = 0) -> Router:
    return Router(
        config,
        Stage.AGG,
        list(range(len(pools))),
        B,
        lambda w, hashes, n: pools[w].match_prefix(hashes, n),
        rng(seed),
    )


def test_route_records_the_true_overlaps_and_the_ranking():
    hashes = prompt(1)
    router = make_router(cached_pools(hashes, [4, 12, 0]), SGLANG)
    decision = router.route(7, ISL, hashes, Knobs(), now_s=2.0)
    assert (decision.chosen, decision.overlap_blocks) == (1, (4, 12, 0))
    assert decision.costs == pytest.approx((-0.2, -0.6, 0.0), abs=1e-12)
    assert [router.loads[w].active_requests for w in range(3)] == [0, 1, 0]
    router.free(7)
    assert router.loads[1].active_requests == 0


def test_legacy_rule_grows_the_router_own_trees():
    # Nothing is cached (overlaps 0), so every request misses and goes to the smallest tree,
    # which counts the distinct prompt blocks routed to each worker.
    routing = ClassicRouting(LEGACY_SGLANG, [0, 1], B, rng(4))
    a, d = prompt(1, 26), prompt(2, 10)
    c = a[:10] + prompt(3, 16)  # shares A's first 10 blocks

    def route(blocks: tuple[int, ...]) -> int:
        return routing.select([0, 0], [0, 0], len(blocks) * B, blocks)[0]

    x = route(a)  # trees 0 and 0 tie: either
    y = 1 - x
    assert route(d) == y  # 0 < 26
    assert route(c) == y  # 10 < 26; Y now holds 10 + 26 = 36 (A's head is new to it)
    assert (routing.tree_blocks(x), routing.tree_blocks(y)) == (26, 36)
    assert route(d) == x  # 26 < 36; X gains D's 10
    assert (routing.tree_blocks(x), routing.tree_blocks(y)) == (36, 36)
    assert ClassicRouting(SGLANG, [0, 1], B, rng()).tree_blocks(0) == 0  # no tree kept


def test_llm_d_route_reads_engine_metrics_when_given():
    router = make_router(cached_pools(prompt(0), [0, 0]), LLM_D)
    router.loads[0].active_requests = 3
    # No engine metrics: the queue is the router's in-flight count (3, 0), KV scores 1 on both:
    # W0 = 0 + 2 + 0 = 2, W1 = 0 + 2 + 2 = 4.
    decision = router.route(1, ISL, prompt(1), Knobs(), 0.0)
    assert (decision.chosen, decision.costs) == (1, (-2.0, -4.0))
    router.free(1)
    # Engines report waiting 0 and 5, usage 0.5 and 0: W0 = 2 x 0.5 + 2 x 1 = 3, W1 = 2 + 0 = 2.
    gauges = {0: EngineMetrics(0, 0.5), 1: EngineMetrics(5, 0.0)}
    router.set_engine_metrics(gauges.__getitem__)
    decision = router.route(2, ISL, prompt(1), Knobs(), 0.0)
    assert (decision.chosen, decision.costs) == (0, (-3.0, -2.0))


# -- end to end -------------------------------------------------------------------------------

AGG = TopologyConfig(mode="agg", num_workers=3)
DISAGG = TopologyConfig(
    mode="disagg",
    num_prefill_workers=2,
    num_decode_workers=2,
    kv_transfer=KvTransferConfig(bandwidth_gbps=8.0),
)
NUM_REQUESTS = 200
ROUTERS = {"cache_aware": SGLANG, "cache_aware_legacy": LEGACY_SGLANG, "llm_d": LLM_D}


def scenario(topology: TopologyConfig, router: RouterConfig) -> ScenarioConfig:
    return ScenarioConfig(
        seed=11,
        topology=topology,
        engine=EngineConfig(block_size=B, num_gpu_blocks=2048, max_num_seqs=16),
        router=router,
        workload=WorkloadConfig(
            arrival="poisson",
            rate_rps=30.0,
            num_requests=NUM_REQUESTS,
            isl_tokens=600,
            osl_tokens=24,
            isl_jitter=0.3,
            osl_jitter=0.3,
            shared_prefix_ratio=0.5,
            num_prefix_groups=3,
        ),
    )


def check_conservation(records: tuple[RequestRecord, ...], disagg: bool) -> None:
    """Every request completes once, each stage routed it once, and to a worker it ranked best."""
    assert sorted(r.request_id for r in records) == list(range(NUM_REQUESTS))
    stages = [Stage.PREFILL, Stage.DECODE] if disagg else [Stage.AGG]
    for record in records:
        assert [d.stage for d in record.decisions] == stages
        assert record.arrival_s <= record.first_token_s <= record.last_token_s
        for decision in record.decisions:
            ranked = decision.costs[decision.candidates.index(decision.chosen)]
            assert ranked == min(decision.costs)
            assert len(decision.overlap_blocks) == len(decision.candidates)
        assert record.decisions[0].chosen == record.prefill_worker
        assert record.decisions[-1].chosen == record.decode_worker


@pytest.mark.parametrize("topology", [AGG, DISAGG], ids=["agg", "disagg"])
@pytest.mark.parametrize("name", list(ROUTERS))
def test_simulate_conserves_requests_and_is_deterministic(name, topology):
    config = scenario(topology, ROUTERS[name])
    first, second = simulate(config), simulate(config)
    check_conservation(first.records, topology is DISAGG)
    assert first.records == second.records
    assert first.sim_time_s == second.sim_time_s
    assert any(r.cached_tokens > 0 for r in first.records)


def test_llm_d_with_engine_metrics_end_to_end():
    readings: list[EngineMetrics] = []

    def run() -> tuple[RequestRecord, ...]:
        cluster = build_cluster(scenario(DISAGG, LLM_D))

        def gauges(worker: int) -> EngineMetrics:
            engine = cluster.engines[worker]
            reading = EngineMetrics(len(engine.waiting), engine.pool.num_active / engine.pool.num_blocks)
            readings.append(reading)
            return reading

        for router in (cluster.router, cluster.decode_router):
            assert router is not None
            router.set_engine_metrics(gauges)
        cluster.env.run()
        return tuple(cluster.records)

    first = run()
    assert len(readings) == 2 * NUM_REQUESTS * 2  # two stages, two candidates each
    assert all(r.num_waiting >= 0 and 0.0 <= r.kv_usage <= 1.0 for r in readings)
    assert any(r.kv_usage > 0 for r in readings)
    check_conservation(first, disagg=True)
    assert run() == first
