"""Dynamo v0.9 versus 1.6.1 disaggregated routing (`router.router_semantics`).

v0.9 (the paper's release) forced only `overlap_score_weight = 0` on the decode stage, so a
prompt prefix already booked on a decode worker counts once there, and broke cost ties towards
the worker with the fewest cached blocks; 1.6.1 makes the decode stage load-only and breaks ties
at random.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_determinism import DISAGG, scenario

from envs.errors import ScenarioError
from envs.scenarios import validate
from envs.sim.config import RouterConfig, ScenarioConfig
from envs.sim.knobs import Knobs, apply_override
from envs.sim.kv_cache import BlockPool
from envs.sim.records import Stage
from envs.sim.router import Router, select_index
from envs.sim.run import build_cluster, simulate

B = 16
# Decode worker 0 holds request 1 (blocks 1, 2); worker 1 holds request 2 (blocks 3, 4).
# A new 3-block prompt (1, 2, 5) shares two blocks with worker 0.
PROMPT = (1, 2, 5)


def _decode_router(semantics: str) -> Router:
    config = RouterConfig(router_semantics=semantics)
    pools = [BlockPool(64), BlockPool(64)]
    router = Router(
        config, Stage.DECODE, [0, 1], B, lambda w, h, n: pools[w].match_prefix(h, n), np.random.default_rng(0)
    )
    forced = {
        "dynamo-0.9": {"overlap_score_weight": 0.0},
        "dynamo-1.6": {"overlap_score_credit": 0.0, "assume_kv_reuse": False, "track_prefill_tokens": False},
    }[semantics]
    knobs = apply_override(Knobs.from_config(config), forced)
    router._book(1, 0, 2 * B, (1, 2), 0, knobs)
    router.loads[0].active_requests += 1
    # Force request 2 onto worker 1 whatever the costs say, to set up the loads.
    router._book(2, 1, 2 * B, (3, 4), 0, knobs)
    router.loads[1].active_requests += 1
    return router, knobs


def test_v09_decode_counts_a_booked_prefix_once() -> None:
    router, knobs = _decode_router("dynamo-0.9")
    decision = router.route(3, 3 * B, PROMPT, knobs, 0.0)
    # Worker 0: 2 booked + 1 new block (1 and 2 are shared); worker 1: 2 booked + 3 new.
    assert decision.costs == (3.0, 5.0)
    assert decision.chosen == 0


def test_v16_decode_is_load_only() -> None:
    router, knobs = _decode_router("dynamo-1.6")
    decision = router.route(3, 3 * B, PROMPT, knobs, 0.0)
    assert decision.costs == (5.0, 5.0)


def test_v09_ties_go_to_the_smallest_tree_then_at_random() -> None:
    rng = np.random.default_rng(1)
    costs = [2.0, 2.0, 2.0, 3.0]
    assert {select_index(costs, 0.0, rng, [5, 1, 7, 0]) for _ in range(100)} == {1}
    picks = {select_index(costs, 0.0, rng, [5, 1, 1, 0]) for _ in range(200)}
    assert picks == {1, 2}


def small_disagg_scenario(semantics: str) -> ScenarioConfig:
    return scenario(DISAGG, RouterConfig(router_semantics=semantics))


def test_v09_rejects_knobs_it_did_not_have() -> None:
    with pytest.raises(ScenarioError, match=r"overlap_score_credit: Dynamo v0\.9 has no such knob"):
        validate(
            {"name": "x", "router": {"router_semantics": "dynamo-0.9", "overlap_score_credit": 0.5}}, "s.yaml"
        )
    validate(
        {
            "name": "x",
            "duration_s": 1,
            "router": {"router_semantics": "dynamo-0.9", "overlap_score_weight": 0.5},
        },
        "s.yaml",
    )


def test_v09_override_takes_only_weight_and_temperature() -> None:
    scenario = small_disagg_scenario("dynamo-0.9")
    cluster = build_cluster(scenario)
    cluster.set_router_override({"overlap_score_weight": 0.5, "router_temperature": 0.2})
    assert cluster.knobs.prefill_load_scale == 0.5
    with pytest.raises(ValueError, match=r"Dynamo v0\.9 takes only"):
        cluster.set_router_override({"prefill_load_scale": 2.0})


def test_semantics_change_decode_routing_on_a_templated_workload() -> None:
    runs = {
        semantics: simulate(small_disagg_scenario(semantics)) for semantics in ("dynamo-0.9", "dynamo-1.6")
    }

    def decode_costs(result):
        return [d.costs for r in result.records for d in r.decisions if d.stage == Stage.DECODE]

    # Same workload, different decode costs: v0.9 discounts prefixes booked on a worker.
    assert len(decode_costs(runs["dynamo-0.9"])) == len(decode_costs(runs["dynamo-1.6"]))
    assert sum(map(sum, decode_costs(runs["dynamo-0.9"]))) < sum(map(sum, decode_costs(runs["dynamo-1.6"])))
