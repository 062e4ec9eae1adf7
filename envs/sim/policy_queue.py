"""Dynamo 1.6.1's policy-class router queue: one queue per class, served by deficit round robin.

Dynamo (`lib/kv-router/src/scheduling/queue.rs` `handle_enqueue` / `handle_update`,
`policy_queue.rs` `PolicyQueue::pop_next`; configured by `envs.sim.policy_config`):

- on arrival a request is classified (its named policy, its uncached prompt tokens) and queues
  when its class has a busy threshold and either the class already has requests waiting (no
  bypass within a class) or every worker is busy by that class's thresholds; a class with no
  threshold never queues;
- a request that would queue is turned away (HTTP 529) when its class's queue already holds
  `limit_per_worker` x workers requests, prompt tokens or cached prompt tokens (checked before it
  is added: the one that crosses a cap is taken);
- whenever a prefill finishes or a request leaves, classes are served by deficit round robin: a
  class is a candidate when its head can go (not every worker busy by the class's thresholds);
  a visit spends credit when the head's cost (uncached prompt tokens, at least 1) fits, else
  grants `quantum` once; when no head fits after one ring pass, every candidate gets the fewest
  whole rounds that make one fit. A class keeps leftover credit only while it has requests, and
  one served with credit to spare is offered first on the next pop (`carry_class`); the ring
  starts after the last class served.

Within a class the order is `queue_policy`'s (as `envs.sim.router_queue`).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from envs.sim.busy import prefill_busy
from envs.sim.policy_config import PolicyClassConfig, PolicyProfile
from envs.sim.router import WorkerLoad
from envs.sim.router_queue import QueueEntry, Verdict, queue_score

Payload = TypeVar("Payload")


@dataclass(slots=True)
class _ClassQueue(Generic[Payload]):
    config: PolicyClassConfig
    # (-score, enqueue seq, cost, cached tokens, prompt tokens, payload)
    heap: list[tuple[float, int, int, int, int, Payload]] = field(default_factory=list)
    deficit: int = 0
    requests: int = 0
    raw_isl_tokens: int = 0
    cached_tokens: int = 0

    def over_limit(self, num_workers: int) -> str | None:
        """The first queue cap already reached (Dynamo's `queue_rejection`), or None."""
        c = self.config
        for kind, current, per_worker in (
            ("requests", self.requests, c.request_queue_limit_per_worker),
            ("raw_isl_tokens", self.raw_isl_tokens, c.raw_isl_token_queue_limit_per_worker),
            ("cached_tokens", self.cached_tokens, c.cached_token_queue_limit_per_worker),
        ):
            if per_worker is not None and current >= per_worker * num_workers:
                return kind
        return None


class PolicyRouterQueue(Generic[Payload]):
    """The router queue of a stage under a policy profile (see the module docstring)."""

    def __init__(self, profile: PolicyProfile, max_batched_tokens: int) -> None:
        self.profile = profile
        self._budget = max_batched_tokens  # one engine config per stage: one budget
        self._classes: list[_ClassQueue[Payload]] = [_ClassQueue(c) for c in profile.policy_classes]
        self._cursor = 0
        self._carry: int | None = None
        self._seq = 0
        self._pending = 0
        self.num_queued_total = 0
        self.class_of: dict[int, str] = {}  # request key -> its class, for every request offered
        self.rejected_by_class: Counter[str] = Counter()  # turned away by a queue cap
        self.served_order: list[str] = []  # classes in the order the queue released requests

    def __len__(self) -> int:
        return self._pending

    def class_all_busy(self, index: int, loads: Sequence[WorkerLoad]) -> bool:
        c = self._classes[index].config
        tokens, frac = c.prefill_busy_threshold, c.prefill_busy_threshold_frac
        budget = self._budget
        return bool(loads) and all(
            prefill_busy(load.active_prefill_tokens, budget, tokens, frac) for load in loads
        )

    def offer(self, payload: Payload, entry: QueueEntry, loads: Sequence[WorkerLoad]) -> Verdict:
        """Classify an arriving request, then route it now, queue it, or turn it away."""
        uncached = entry.uncached() if self.profile.needs_cache_state(entry.policy_class) else None
        index = self.profile.class_index(entry.policy_class, uncached or 0)
        queue = self._classes[index]
        self.class_of[entry.key] = queue.config.name
        if not queue.config.queueing_enabled:
            return "route"
        if not queue.heap and not self.class_all_busy(index, loads):
            return "route"
        if queue.over_limit(len(loads)) is not None:
            self.rejected_by_class[queue.config.name] += 1
            return "rejected"
        uncached = entry.uncached() if uncached is None else uncached
        self._push(queue, payload, entry, uncached)
        return "queued"

    def _push(self, queue: _ClassQueue[Payload], payload: Payload, entry: QueueEntry, uncached: int) -> None:
        cached = min(entry.input_tokens, entry.input_tokens - uncached)
        cost = max(1, entry.input_tokens - cached)  # zero-work requests still take part in DRR
        score = queue_score(queue.config.queue_policy, entry.arrival_s, entry.input_tokens - cached)
        heapq.heappush(queue.heap, (-score, self._seq, cost, cached, entry.input_tokens, payload))
        self._seq += 1
        queue.requests += 1
        queue.raw_isl_tokens += entry.input_tokens
        queue.cached_tokens += cached
        self._pending += 1
        self.num_queued_total += 1

    def pop_ready(self, loads: Sequence[WorkerLoad]) -> Payload | None:
        """The next request to route (Dynamo's `pop_next`), or None while no class's head can go."""
        if not self._pending:
            self._carry = None
            return None
        candidates: list[int | None] = [None] * len(self._classes)
        carried, self._carry = self._carry, None
        if carried is not None:
            cost = self._head_cost(carried, loads)
            if cost is not None and cost <= self._classes[carried].deficit:
                return self._pop(carried)
            candidates[carried] = cost
            self._reset_if_empty(carried)
        for offset in range(len(self._classes)):
            index = (self._cursor + offset) % len(self._classes)
            cost = candidates[index] if index == carried else self._head_cost(index, loads)
            if cost is None:
                self._reset_if_empty(index)
                continue
            candidates[index] = cost
            queue = self._classes[index]
            if cost <= queue.deficit:  # spend carried credit before another quantum
                return self._pop(index)
            queue.deficit += queue.config.quantum
            if cost <= queue.deficit:
                return self._pop(index)
        return self._fast_forward(candidates)

    def _fast_forward(self, candidates: list[int | None]) -> Payload | None:
        """Grant every candidate the fewest whole rounds after which some head fits."""
        rounds = [
            -(-(cost - self._classes[i].deficit) // self._classes[i].config.quantum)
            for i, cost in enumerate(candidates)
            if cost is not None
        ]
        if not rounds:
            return None
        step = min(rounds)
        for i, cost in enumerate(candidates):
            if cost is not None:
                self._classes[i].deficit += self._classes[i].config.quantum * step
        for offset in range(len(self._classes)):
            index = (self._cursor + offset) % len(self._classes)
            cost = candidates[index]
            if cost is not None and cost <= self._classes[index].deficit:
                return self._pop(index)
        return None

    def _head_cost(self, index: int, loads: Sequence[WorkerLoad]) -> int | None:
        heap = self._classes[index].heap
        if not heap or self.class_all_busy(index, loads):
            return None
        return heap[0][2]

    def _reset_if_empty(self, index: int) -> None:
        if not self._classes[index].heap:
            self._classes[index].deficit = 0

    def _pop(self, index: int) -> Payload:
        self._cursor = (index + 1) % len(self._classes)
        queue = self._classes[index]
        _, _, cost, cached, input_tokens, payload = heapq.heappop(queue.heap)
        queue.deficit = max(0, queue.deficit - cost)
        queue.requests -= 1
        queue.raw_isl_tokens -= input_tokens
        queue.cached_tokens -= cached
        self._pending -= 1
        if not queue.heap:
            queue.deficit = 0
        elif queue.deficit > 0:
            self._carry = index
        self.served_order.append(queue.config.name)
        return payload
