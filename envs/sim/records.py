"""Immutable per-request records: everything the simulator says about a finished request.

Metrics (`envs.sim.metrics`) are pure functions of these records, so each one can be checked on
hand-built records, and PoA-hat can replay the routing decisions with the costs the router saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """Which routing stage made a decision."""

    AGG = "agg"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """One routing decision and what the router saw for every candidate worker.

    `costs` and `overlap_blocks` are indexed like `candidates`; costs are the Dynamo cost (lower
    is better) for the KV router and the load figure used by the load-based modes. Overlaps are
    the true cached prefix on each candidate, recorded even when the router ignores them (credit
    0, baseline modes), so that PoA-hat can price cache hits for any router.
    """

    stage: Stage
    time_s: float
    chosen: int
    candidates: tuple[int, ...]
    costs: tuple[float, ...]
    overlap_blocks: tuple[int, ...]
    overlap_score_credit: float
    prefill_load_scale: float
    router_temperature: float


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A finished request. Times are seconds of simulated time since the run started."""

    request_id: int
    session_id: int
    turn: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    prefill_worker: int
    decode_worker: int
    prefill_start_s: float
    prefill_end_s: float
    transfer_start_s: float
    transfer_end_s: float
    first_token_s: float
    last_token_s: float
    num_preemptions: int
    decisions: tuple[RouteDecision, ...]
    # Of `cached_tokens`, the prompt tokens onboarded from the lower KV tiers (G2 host, G3 disk).
    host_cached_tokens: int = 0
    disk_cached_tokens: int = 0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.last_token_s - self.arrival_s

    @property
    def mean_itl_s(self) -> float | None:
        """Mean gap between output tokens after the first; None for one-token outputs."""
        if self.output_tokens < 2:
            return None
        return (self.last_token_s - self.first_token_s) / (self.output_tokens - 1)
