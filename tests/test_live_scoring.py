"""The knob router's pricing on hand-computed states (no Dynamo needed; the live tests check it
against Dynamo's own KvRouter)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.live.scoring import choose_worker, knobs_for, worker_states
from envs.sim.config import RouterConfig

BLOCK = 64
ISL = 740  # 11 full blocks + 36 tokens


def _reported(device_blocks: list[int], active_prefill: list[int], decode_blocks: list[int]):
    """What Dynamo reports: prefill tokens after the request with the cached prefix taken off."""
    loads = [
        {
            "worker_id": 10 + i,
            "dp_rank": 0,
            "potential_prefill_tokens": active + ISL - device * BLOCK,
            "potential_decode_blocks": blocks,
            "active_requests": 1,
        }
        for i, (device, active, blocks) in enumerate(
            zip(device_blocks, active_prefill, decode_blocks, strict=True)
        )
    ]
    hits = {
        "workers": [
            {"worker_id": 10 + i, "dp_rank": 0, "device_blocks": d} for i, d in enumerate(device_blocks)
        ]
    }
    return worker_states(loads[::-1], hits, ISL, BLOCK, assume_kv_reuse=True)


def test_states_recover_the_active_tokens_in_worker_order():
    states = _reported([10, 0], [128, 640], [11, 22])
    assert [s.worker_id for s in states] == [10, 11]
    assert [s.active_prefill_tokens for s in states] == [128, 640]
    assert [s.device_blocks for s in states] == [10, 0]


@pytest.mark.parametrize(
    ("knobs", "costs", "winner"),
    [
        # (128 + 740) / 64 - 10 = 3.5625 -> + 21 decode blocks; (640 + 740) / 64 = 21.5625 + 11
        ({}, (24.5625, 32.5625), 10),
        # credit 0: 13.5625 + 21 = 34.5625 vs 32.5625 -> the uncached, less loaded worker
        ({"overlap_score_credit": 0.0}, (34.5625, 32.5625), 11),
        # scale 0: decode blocks alone
        ({"prefill_load_scale": 0.0}, (21.0, 11.0), 11),
        # credit 2: 13.5625 - 20 < 0 -> 0, + 21
        ({"overlap_score_credit": 2.0}, (21.0, 32.5625), 10),
    ],
)
def test_costs_by_hand(knobs, costs, winner):
    states = _reported([10, 0], [128, 640], [21, 11])
    router = RouterConfig()
    choice = choose_worker(states, ISL, BLOCK, knobs_for(router, knobs), router, np.random.default_rng(0))
    assert choice.costs == pytest.approx(costs) and choice.worker.worker_id == winner


def test_temperature_samples_every_worker_and_zero_temperature_does_not():
    states = _reported([10, 0, 0], [0, 0, 0], [11, 11, 11])
    router = RouterConfig()
    rng = np.random.default_rng(1)
    hot = knobs_for(router, {"router_temperature": 5.0})
    picks = {choose_worker(states, ISL, BLOCK, hot, router, rng).worker.worker_id for _ in range(200)}
    cold = {
        choose_worker(states, ISL, BLOCK, knobs_for(router, {}), router, rng).worker.worker_id
        for _ in range(50)
    }
    assert picks == {10, 11, 12} and cold == {10}


def test_no_workers_is_a_clear_error():
    with pytest.raises(ValueError, match="sees none"):
        choose_worker([], ISL, BLOCK, knobs_for(RouterConfig(), {}), RouterConfig(), np.random.default_rng(0))
