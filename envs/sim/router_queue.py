"""Dynamo's router queue: requests wait in the router, not on a worker, while every worker is busy.

Dynamo 1.6.1 (`--router-queue-threshold F`, `--router-queue-policy`; `lib/kv-router` scheduling
`queue.rs`, `policy_queue.rs`, `policy_config.rs`):

- a worker is prefill-busy when its active prefill tokens (the router's own books) exceed
  F x its `max_num_batched_tokens`;
- a request queues when every worker of its stage is busy, or when requests are already waiting
  (no bypass of the backlog);
- whenever a prefill finishes or a request leaves, the queue is drained in policy order while
  some worker is not busy, and each request is routed then, on the state of that moment;
- the order is the highest score first, ties to the earliest enqueued: fcfs scores -arrival,
  lcfs +arrival, wspt 1 / max(1, prompt tokens - the best cached prefix at enqueue) (Smith's
  rule; no request carries a priority here, so the priority bump of each score is 0).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Generic, Literal, NamedTuple, TypeVar

from envs.sim.router import WorkerLoad

QueuePolicy = Literal["fcfs", "wspt", "lcfs"]
Payload = TypeVar("Payload")
Verdict = Literal["route", "queued", "rejected"]


class QueueEntry(NamedTuple):
    """What a router queue needs of an arriving request; `uncached` is asked only if needed (it
    looks up the workers' caches)."""

    key: int
    arrival_s: float
    input_tokens: int
    uncached: Callable[[], int]
    policy_class: str | None = None


def queue_score(policy: QueuePolicy, arrival_s: float, uncached_tokens: int) -> float:
    """A waiting request's score under `policy` (the highest goes first; see the docstring)."""
    if policy == "fcfs":
        return -arrival_s
    if policy == "lcfs":
        return arrival_s
    return 1.0 / max(1, uncached_tokens)


class RouterQueue(Generic[Payload]):
    """The pending requests of one routing stage, and the busy rule that gates them."""

    def __init__(self, threshold_frac: float, policy: QueuePolicy, max_batched_tokens: int) -> None:
        if threshold_frac < 0:
            raise ValueError(f"router_queue_threshold must be >= 0, got {threshold_frac}")
        self.policy = policy
        # Every worker of a stage runs the stage's engine config: one budget for all.
        self._limit = threshold_frac * max_batched_tokens
        self._heap: list[tuple[float, int, Payload]] = []
        self._num_enqueued = 0
        self.num_queued_total = 0

    def __len__(self) -> int:
        return len(self._heap)

    def all_busy(self, loads: Sequence[WorkerLoad]) -> bool:
        # No worker at all is not "all busy": the request goes on to fail to route (Dynamo's rule).
        limit = self._limit
        return bool(loads) and all(load.active_prefill_tokens > limit for load in loads)

    def should_queue(self, loads: Sequence[WorkerLoad]) -> bool:
        return bool(self._heap) or self.all_busy(loads)

    def offer(self, payload: Payload, entry: QueueEntry, loads: Sequence[WorkerLoad]) -> Verdict:
        """Route an arriving request now, or queue it (this single class never turns one away)."""
        if not self.should_queue(loads):
            return "route"
        self.push(payload, entry.arrival_s, entry.uncached() if self.policy == "wspt" else 0)
        return "queued"

    def push(self, payload: Payload, arrival_s: float, uncached_tokens: int) -> None:
        score = queue_score(self.policy, arrival_s, uncached_tokens)
        # heapq pops the smallest: the highest score first, then the earliest enqueued.
        heapq.heappush(self._heap, (-score, self._num_enqueued, payload))
        self._num_enqueued += 1
        self.num_queued_total += 1

    def pop_ready(self, loads: Sequence[WorkerLoad]) -> Payload | None:
        """The next request to route, or None while every worker is busy (or nothing waits)."""
        if not self._heap or self.all_busy(loads):
            return None
        return heapq.heappop(self._heap)[2]
