"""The knob router's choice of worker: Dynamo 1.6.1's cost, on Dynamo's own state, with the agent's
knobs.

Why not let the `KvRouter` choose: the installed ai-dynamo-runtime 1.6.1 ignores a per-request
`router_config_override` (its default policy reads the score knobs from its `KvRouterConfig`
only; measured in `tests/test_live.py`). So the knob router asks the `KvRouter` for the two
inputs of its cost (`get_overlap_scores`: each worker's cached prefix from the KV-event index;
`get_potential_loads`: each worker's booked prefill tokens, decode blocks and requests), prices
them with the simulator's implementation of the same cost (`envs.sim.router.kv_costs`, so live
and simulated routing share one formula), and sends the request to the chosen worker by its
instance id, which the `KvRouter` books exactly as it books its own choices.

`get_potential_loads` reports a worker's prefill tokens *after* this request, with the cached
prefix already taken off (`assume_kv_reuse`): `active + isl - device_blocks * block_size`. The
cost credits the prefix itself (`overlap_score_credit * device_blocks`), so the active tokens are
recovered first. `tests/test_live.py` checks every choice here against the `KvRouter`'s own
`best_worker` on the same state, for knob values set in its `KvRouterConfig`.

Pure: no I/O; the caller awaits the two queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.sim.config import RouterConfig
from envs.sim.knobs import Knobs, merge_override
from envs.sim.router import WorkerLoad, kv_costs, select_index


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker as Dynamo's KvRouter sees it, for one request."""

    worker_id: int
    dp_rank: int
    active_prefill_tokens: int  # booked by requests in flight, before this one
    potential_decode_blocks: int  # booked blocks, with the ones this request would add
    active_requests: int
    device_blocks: int  # the request's leading blocks in the worker's GPU cache
    host_blocks: int  # blocks continuing the device match in host memory (G2)
    disk_blocks: int  # ... and after those, on disk (G3)


@dataclass(frozen=True, slots=True)
class Choice:
    worker: WorkerState
    states: tuple[WorkerState, ...]  # every candidate, in a fixed order
    costs: tuple[float, ...]  # per candidate


def worker_states(
    loads: Sequence[Mapping[str, Any]],
    overlaps: Mapping[str, Any],
    isl_tokens: int,
    block_size: int,
    assume_kv_reuse: bool,
) -> list[WorkerState]:
    """Join `get_potential_loads` and `get_overlap_scores` by (worker, dp rank), in a fixed order."""
    hits = {(row["worker_id"], row["dp_rank"]): row for row in overlaps.get("workers", ())}
    states = []
    for load in sorted(loads, key=lambda row: (row["worker_id"], row["dp_rank"])):
        hit = hits.get((load["worker_id"], load["dp_rank"]), {})
        device = int(hit.get("device_blocks") or 0)
        added_tokens = isl_tokens - device * block_size if assume_kv_reuse else isl_tokens
        states.append(
            WorkerState(
                int(load["worker_id"]),
                int(load["dp_rank"]),
                max(0, int(load["potential_prefill_tokens"]) - added_tokens),
                int(load["potential_decode_blocks"]),
                int(load.get("active_requests") or 0),
                device,
                int(hit.get("host_pinned_extension_blocks") or 0),
                int(hit.get("disk_extension_blocks") or 0),
            )
        )
    return states


def choose_worker(
    states: Sequence[WorkerState],
    isl_tokens: int,
    block_size: int,
    knobs: Knobs,
    router: RouterConfig,
    rng: np.random.Generator,
) -> Choice:
    """Dynamo's choice among `states` with these knobs: argmin of the cost at temperature 0
    (random among ties), a softmax over min-max-normalised costs above it."""
    if not states:
        raise ValueError("no workers to choose from: the KvRouter sees none yet")
    # `potential_decode_blocks` already holds the blocks this request adds, hence no new blocks.
    loads = [
        WorkerLoad(s.active_prefill_tokens, s.active_requests, anonymous_blocks=s.potential_decode_blocks)
        for s in states
    ]
    # With the credit at 0 Dynamo builds no indexer: no cache term, lower tiers included.
    indexed = knobs.overlap_score_credit > 0
    overlaps = [s.device_blocks if indexed else 0 for s in states]
    tiers = [(s.host_blocks, s.disk_blocks) for s in states] if indexed else None
    new_blocks = [0] * len(states)
    costs = kv_costs(loads, overlaps, new_blocks, isl_tokens, block_size, knobs, router, tiers)
    index = select_index(costs, knobs.router_temperature, rng)
    return Choice(states[index], tuple(states), tuple(costs))


def knobs_for(router: RouterConfig, values: Mapping[str, float]) -> Knobs:
    """The scenario's knobs with the agent's values in force (Dynamo's override merge)."""
    return merge_override(router, {name: float(value) for name, value in values.items()})
