"""Dynamo 1.6.1 KV-router costs and selection, checked against hand-computed values.

The worked example: 3 workers, block size 16, a 420-token prompt (26 full blocks; 27 blocks when
rounded up, which only normalises the overlap-credit decay). Per worker:

    worker  overlap  active prefill tokens  active decode blocks  new blocks  active requests
    W0      20       500                    60                    26          2
    W1      0        0                      40                    26          1
    W2      10       1000                   70                    16          3

Default knobs (credit 1, decay 0, scale 1, request weight 0):
    W0 = (500 + 420)/16 - 20 + (60 + 26)  = 57.5 - 20 + 86   = 123.5
    W1 = 420/16 + (40 + 26)               = 26.25 + 66       = 92.25
    W2 = (1000 + 420)/16 - 10 + (70 + 16) = 88.75 - 10 + 86  = 164.75
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.sim.config import RouterConfig
from envs.sim.knobs import Knobs, apply_override
from envs.sim.kv_cache import BlockPool
from envs.sim.records import Stage
from envs.sim.router import Router, WorkerLoad, kv_costs, select_index

B = 16
ISL = 420
N_FULL = 26  # floor(420 / 16)
REQUEST_BLOCKS = 27  # ceil(420 / 16)
OVERLAPS = [20, 0, 10]
NEW_BLOCKS = [26, 26, 16]
EXPECTED = [123.5, 92.25, 164.75]


def example_loads() -> list[WorkerLoad]:
    return [
        WorkerLoad(active_prefill_tokens=500, active_requests=2, anonymous_blocks=60),
        WorkerLoad(active_prefill_tokens=0, active_requests=1, anonymous_blocks=40),
        WorkerLoad(active_prefill_tokens=1000, active_requests=3, anonymous_blocks=70),
    ]


def costs_for(config: RouterConfig, knobs: Knobs | None = None) -> list[float]:
    knobs = knobs or Knobs.from_config(config)
    return kv_costs(example_loads(), OVERLAPS, NEW_BLOCKS, ISL, B, knobs, config)


# -- kv_costs ---------------------------------------------------------------------------------


def test_worked_example_default_knobs():
    assert [load.active_decode_blocks for load in example_loads()] == [60, 40, 70]
    assert costs_for(RouterConfig()) == pytest.approx(EXPECTED, abs=1e-12)


def test_worked_example_credit_decay():
    # decay_w = 1 / (1 + ((AP_w - min AP) / 16) / 27); min AP = 0 (W1).
    decay_w0 = 1.0 / (1.0 + (500 / 16) / REQUEST_BLOCKS)  # 27 / 58.25
    decay_w2 = 1.0 / (1.0 + (1000 / 16) / REQUEST_BLOCKS)  # 27 / 89.5
    expected = [57.5 - 20 * decay_w0 + 86, 92.25, 88.75 - 10 * decay_w2 + 86]
    assert expected[0] == pytest.approx(134.2296, abs=1e-4)
    assert expected[2] == pytest.approx(171.7332, abs=1e-4)
    costs = costs_for(RouterConfig(overlap_score_credit_decay=1.0))
    assert costs == pytest.approx(expected, abs=1e-12)


def test_worked_example_active_request_weight():
    costs = costs_for(RouterConfig(decode_active_request_weight=10.0))
    assert costs == pytest.approx([143.5, 102.25, 194.75], abs=1e-12)


def test_prefill_load_scale_and_credit_scale_the_prefill_term():
    # scale 2, credit 0.5: W0 = 2 * (57.5 - 10) + 86 = 181; W1 = 2 * 26.25 + 66 = 118.5;
    # W2 = 2 * (88.75 - 5) + 86 = 253.5.
    config = RouterConfig(prefill_load_scale=2.0, overlap_score_credit=0.5)
    assert costs_for(config) == pytest.approx([181.0, 118.5, 253.5], abs=1e-12)


def test_prefill_term_is_clamped_at_zero():
    # 420/16 = 26.25 prefill blocks, but a credit of 2 x 20 overlap blocks = 40: the term is 0.
    load = WorkerLoad(anonymous_blocks=5)
    knobs = Knobs(overlap_score_credit=2.0)
    assert kv_costs([load], [20], [6], ISL, B, knobs, RouterConfig()) == [11.0]


def test_untracked_prefill_leaves_only_decode_blocks():
    knobs = Knobs(track_prefill_tokens=False)
    costs = kv_costs(example_loads(), OVERLAPS, NEW_BLOCKS, ISL, B, knobs, RouterConfig())
    assert costs == [86.0, 66.0, 86.0]


# -- select_index -----------------------------------------------------------------------------


def softmax_probs(costs: list[float], temperature: float) -> np.ndarray:
    low, span = min(costs), max(costs) - min(costs)
    weights = np.exp([-(c - low) / (span * temperature) for c in costs])
    return weights / weights.sum()


def draw_frequencies(costs: list[float], temperature: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.bincount([select_index(costs, temperature, rng) for _ in range(n)], minlength=len(costs))
    return counts / n


def assert_binomial(freqs: np.ndarray, probs: np.ndarray, n: int, sigmas: float = 5.0) -> None:
    """Each empirical frequency lies within `sigmas` binomial standard deviations of p."""
    for freq, p in zip(freqs, probs, strict=True):
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(freq - p) <= sigmas * sd + 1e-12, (freqs, probs)


def test_temperature_zero_is_argmin():
    rng = np.random.default_rng(0)
    assert {select_index(EXPECTED, 0.0, rng) for _ in range(200)} == {1}
    assert select_index([5.0, 4.0, 3.0, 9.0], 0.0, rng) == 2


def test_exact_ties_break_uniformly():
    n = 30_000
    freqs = draw_frequencies([2.0, 7.0, 2.0, 2.0], 0.0, n, seed=1)
    assert freqs[1] == 0.0
    # Chi-square over the three tied indices (2 degrees of freedom): 5% critical value 5.99,
    # 0.1% critical value 13.8.
    counts = freqs[[0, 2, 3]] * n
    chi2 = float(((counts - n / 3) ** 2 / (n / 3)).sum())
    assert chi2 < 13.8, counts
    assert_binomial(freqs[[0, 2, 3]], np.full(3, 1 / 3), n)


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [(1.0, [0.3221, 0.4956, 0.1823]), (0.2, [0.1032, 0.8908, 0.0060])],
)
def test_softmax_sampling_frequencies(temperature, expected):
    probs = softmax_probs(EXPECTED, temperature)
    assert probs == pytest.approx(expected, abs=1e-4)
    n = 40_000
    assert_binomial(draw_frequencies(EXPECTED, temperature, n, seed=2), probs, n)


def test_all_equal_costs_are_uniform_at_any_temperature():
    n = 30_000
    for temperature in (0.0, 0.5):
        freqs = draw_frequencies([3.0, 3.0, 3.0], temperature, n, seed=3)
        assert_binomial(freqs, np.full(3, 1 / 3), n)


# -- apply_override ---------------------------------------------------------------------------


def test_legacy_weight_maps_to_prefill_load_scale():
    knobs = apply_override(Knobs(), {"overlap_score_weight": 2.5})
    assert knobs == Knobs(overlap_score_credit=1.0, prefill_load_scale=2.5)


def test_legacy_weight_zero_also_turns_credit_off():
    knobs = apply_override(Knobs(overlap_score_credit=0.7), {"overlap_score_weight": 0.0})
    assert (knobs.prefill_load_scale, knobs.overlap_score_credit) == (0.0, 0.0)
    assert Knobs.from_config(RouterConfig(overlap_score_weight=0.0)).overlap_score_credit == 0.0


def test_override_none_fields_keep_values():
    base = Knobs(overlap_score_credit=0.3, prefill_load_scale=1.7, router_temperature=0.4)
    assert apply_override(base, {"router_temperature": None, "overlap_score_weight": None}) == base
    assert apply_override(base, None) == base
    assert apply_override(base, {"router_temperature": 0.9}) == Knobs(0.3, 1.7, 0.9)


@pytest.mark.parametrize(
    "field", ["overlap_score_weight", "overlap_score_credit", "prefill_load_scale", "router_temperature"]
)
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_override_rejects_negative_and_non_finite(field, value):
    with pytest.raises(ValueError):
        apply_override(Knobs(), {field: value})


def test_override_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown"):
        apply_override(Knobs(), {"overlap_score_wieght": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        apply_override(Knobs(), {"decode_active_request_weight": 1.0})  # a config knob, not an override


# -- Router: the worked example end to end, and its booking ------------------------------------


def prompt(tag: int, n: int = N_FULL) -> tuple[int, ...]:
    return tuple(tag * 1000 + j for j in range(n))


def cached_pools(hashes: tuple[int, ...], cached: list[int]) -> list[BlockPool]:
    """One pool per worker holding the first `cached[w]` blocks of `hashes`."""
    pools = []
    for count in cached:
        pool = BlockPool(256)
        assert pool.allocate(count)
        for block_hash in hashes[:count]:
            assert pool.register(block_hash)
        pools.append(pool)
    return pools


def make_router(pools: list[BlockPool], config: RouterConfig | None = None, seed: int = 0) -> Router:
    return Router(
        config or RouterConfig(),
        Stage.AGG,
        list(range(len(pools))),
        B,
        lambda w, hashes, n: pools[w].match_prefix(hashes, n),
        np.random.default_rng(seed),
    )


def test_route_reproduces_worked_example():
    hashes = prompt(1)
    router = make_router(cached_pools(hashes, OVERLAPS))
    router.loads[0] = WorkerLoad(500, 2, {}, 60)
    router.loads[1] = WorkerLoad(0, 1, {}, 40)
    # W2 has the prompt's first 10 blocks booked by an in-flight request, so it adds only 16.
    router.loads[2] = WorkerLoad(1000, 3, {h: 1 for h in hashes[:10]}, 60)
    decision = router.route(7, ISL, hashes, Knobs(), now_s=1.5)
    assert decision.costs == pytest.approx(EXPECTED, abs=1e-12)
    assert decision.overlap_blocks == (20, 0, 10)
    assert decision.chosen == 1
    assert (decision.stage, decision.time_s, decision.candidates) == (Stage.AGG, 1.5, (0, 1, 2))
    load = router.loads[1]
    assert (load.active_prefill_tokens, load.active_decode_blocks, load.active_requests) == (420, 66, 2)


def test_prefill_done_removes_only_uncached_tokens_and_free_restores_zero():
    hashes_a, hashes_b = prompt(1), prompt(2)
    router = make_router(cached_pools(hashes_a, [20]))
    router.route(1, ISL, hashes_a, Knobs(), 0.0)  # 20 cached blocks: books 420 - 320 = 100 tokens
    router.route(2, 100, hashes_b, Knobs(), 0.0)  # nothing cached: books 100 tokens, 6 blocks
    load = router.loads[0]
    assert (load.active_prefill_tokens, load.active_decode_blocks, load.active_requests) == (200, 32, 2)
    router.prefill_done(1)
    assert (load.active_prefill_tokens, load.active_decode_blocks, load.active_requests) == (100, 32, 2)
    router.free(2)  # freed before its prefill_done: its prefill tokens go too
    assert (load.active_prefill_tokens, load.active_decode_blocks, load.active_requests) == (0, 26, 1)
    router.free(1)
    assert load == WorkerLoad()


def test_prefill_tokens_untracked_are_not_booked():
    router = make_router(cached_pools(prompt(1), [0]))
    router.route(1, ISL, prompt(1), Knobs(track_prefill_tokens=False), 0.0)
    assert router.loads[0].active_prefill_tokens == 0
    router.prefill_done(1)
    router.free(1)
    assert router.loads[0] == WorkerLoad()


@pytest.mark.parametrize(("reuse", "expected_blocks"), [(True, 26 + 16), (False, 26 + 26)])
def test_shared_prefix_blocks_count_once_with_kv_reuse(reuse, expected_blocks):
    a = prompt(1)
    b = a[:10] + prompt(2, N_FULL - 10)  # shares its first 10 blocks with a
    router = make_router(cached_pools(a, [0]))
    knobs = Knobs(assume_kv_reuse=reuse)
    router.route(1, ISL, a, knobs, 0.0)
    second = router.route(2, ISL, b, knobs, 0.0)
    # Cost of the second request: (420 booked + 420) / 16 + 26 booked + blocks it adds.
    assert second.costs == (840 / 16 + expected_blocks,)
    assert router.loads[0].active_decode_blocks == expected_blocks
    router.free(1)
    assert router.loads[0].active_decode_blocks == 26
    router.free(2)
    assert router.loads[0] == WorkerLoad()


def test_random_route_and_free_conserves_loads():
    rng = np.random.default_rng(5)
    prompts = [prompt(g) for g in range(4)]
    router = make_router(cached_pools(prompts[0], [0, 8, 16]), RouterConfig(router_temperature=0.3))
    live: list[int] = []
    for rid in range(400):
        if live and rng.random() < 0.5:
            victim = live.pop(int(rng.integers(len(live))))
            if rng.random() < 0.5:
                router.prefill_done(victim)
            router.free(victim)
        else:
            isl = int(rng.integers(1, ISL + 1))
            router.route(rid, isl, prompts[int(rng.integers(4))], Knobs(router_temperature=0.3), 0.0)
            live.append(rid)
        assert sum(load.active_requests for load in router.loads.values()) == len(live)
        assert all(load.active_prefill_tokens >= 0 for load in router.loads.values())
    for rid in live:
        router.free(rid)
    assert all(load == WorkerLoad() for load in router.loads.values())


# -- load-based modes -------------------------------------------------------------------------


def test_round_robin_cycles():
    pools = cached_pools(prompt(1), [0, 0, 0])
    router = Router(
        RouterConfig(mode="round_robin"),
        Stage.AGG,
        [4, 7, 9],
        B,
        lambda w, hashes, n: pools[[4, 7, 9].index(w)].match_prefix(hashes, n),
        np.random.default_rng(0),
    )
    router.loads[4].active_requests = 100  # round robin ignores load
    chosen = [router.route(rid, ISL, prompt(1), Knobs(), 0.0).chosen for rid in range(7)]
    assert chosen == [4, 7, 9, 4, 7, 9, 4]
    assert [router.loads[w].active_requests for w in (4, 7, 9)] == [103, 2, 2]


def test_power_of_two_picks_less_loaded_of_two_distinct_workers():
    # Two workers: the pair is always {0, 1}, so the idle one always wins. A sampler that could
    # draw the same worker twice would sometimes return the loaded one.
    router = make_router(cached_pools(prompt(1), [0, 0]), RouterConfig(mode="power_of_two"))
    router.loads[0].active_requests = 5
    for rid in range(200):
        assert router.route(rid, ISL, prompt(1), Knobs(), 0.0).chosen == 1
        router.free(rid)
    # Three workers loaded 0, 5, 10: worker 2 never wins; worker 1 wins only the pair {1, 2}
    # (probability 1/3); worker 0 wins every pair it is in (2/3).
    router = make_router(cached_pools(prompt(1), [0, 0, 0]), RouterConfig(mode="power_of_two"), seed=9)
    for worker, active in enumerate([0, 5, 10]):
        router.loads[worker].active_requests = active
    n = 30_000
    picks = []
    for rid in range(n):
        picks.append(router.route(rid, ISL, prompt(1), Knobs(), 0.0).chosen)
        router.free(rid)
    assert_binomial(np.bincount(picks, minlength=3) / n, np.array([2 / 3, 1 / 3, 0.0]), n)
