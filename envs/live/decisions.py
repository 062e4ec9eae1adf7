"""The knob router's routing decisions, kept for the live environment's PoA-hat.

PoA-hat (`envs.poa`) replays each decision with what the router saw for every candidate worker.
Only the knob router sees that on a live deployment, so it keeps its recent decisions in a
bounded log, served as JSON by its control server (`GET /decisions?after=SEQ`); the client joins
them to its own timings by the request id (`x-request-id`, which Dynamo keeps as the request's
context id).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LiveDecision:
    """One choice of the knob router, with the cost inputs of every candidate."""

    seq: int
    time_unix_s: float
    request_id: str
    stage: str  # "agg" or "prefill"
    chosen: int
    candidates: tuple[int, ...]
    costs: tuple[float, ...]
    overlap_blocks: tuple[int, ...]
    isl_tokens: int
    overlap_score_credit: float
    prefill_load_scale: float
    router_temperature: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LiveDecision:
        values = dict(data)
        for name in ("candidates", "costs", "overlap_blocks"):
            values[name] = tuple(values[name])
        return cls(**values)


class DecisionLog:
    """The last `capacity` decisions, numbered from 1."""

    def __init__(self, capacity: int = 50_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._entries: deque[LiveDecision] = deque(maxlen=capacity)
        self._last_seq = 0

    def next_seq(self) -> int:
        self._last_seq += 1
        return self._last_seq

    def append(self, decision: LiveDecision) -> None:
        self._entries.append(decision)

    def after(self, seq: int) -> list[LiveDecision]:
        """The kept decisions numbered above `seq`, oldest first."""
        if not self._entries or seq >= self._entries[-1].seq:
            return []
        first = self._entries[0].seq
        start = max(0, seq + 1 - first)
        return [self._entries[i] for i in range(start, len(self._entries))]
