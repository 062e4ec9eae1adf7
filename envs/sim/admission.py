"""Admission to the first routing stage (the prefill or aggregated router), as Dynamo 1.6.1's
frontend decides it before a worker is picked:

- a request that finds every worker of the pool busy (`envs.sim.busy`) is turned away (HTTP 529);
- otherwise Dynamo's router queue, if any, says whether it routes now, waits, or is turned away
  at its class's cap: the policy classes of `router.policy_config` (`envs.sim.policy_queue`), else
  the one synthetic class of `router.router_queue_threshold` (`envs.sim.router_queue`);
- when a prefill finishes or a request leaves, waiting requests go while a worker has room.
"""

from __future__ import annotations

from collections.abc import Callable

from envs.sim.busy import BusyMonitor
from envs.sim.config import ScenarioConfig
from envs.sim.flight import Flight
from envs.sim.policy_queue import PolicyRouterQueue
from envs.sim.router import Router, WorkerLoad
from envs.sim.router_queue import QueueEntry, RouterQueue, Verdict

OverlapFn = Callable[[int, tuple[int, ...], int], int]  # (worker, prompt hashes, max blocks) -> cached
FirstStageQueue = RouterQueue[Flight] | PolicyRouterQueue[Flight]


def build_router_queue(scenario: ScenarioConfig, first_kind: str) -> FirstStageQueue | None:
    """Dynamo's router queue in front of the first stage: the policy profile's classes, else the
    one synthetic class of a queue threshold (None: no queue)."""
    config = scenario.router
    budget = scenario.engine_for(first_kind).max_num_batched_tokens
    policy = config.policy_config
    profile = policy.profile_for(scenario.model.name) if policy is not None else None
    if profile is not None:
        return PolicyRouterQueue(profile, budget)
    if config.router_queue_threshold is None:
        return None
    return RouterQueue(config.router_queue_threshold, config.router_queue_policy, budget)


class Admission:
    """Busy check and router queue in front of `router`, the first routing stage."""

    def __init__(
        self,
        scenario: ScenarioConfig,
        router: Router,
        busy: BusyMonitor,
        overlap: OverlapFn,
        block_size: int,
        first_kind: str,
    ) -> None:
        self.router = router
        self.busy = busy
        self.queue = build_router_queue(scenario, first_kind)
        self._overlap = overlap
        self._block_size = block_size

    def admit(self, flight: Flight, policy_class: str | None, now_s: float) -> tuple[Verdict, frozenset[int]]:
        """What happens to an arriving request now, and the workers busy at its arrival (a
        request routed now passes over them)."""
        busy = self.busy.busy(self.router, now_s)
        if len(busy) == len(self.router.workers) and busy:
            return "rejected", busy
        if self.queue is None:
            return "route", busy
        uncached = lambda: self._uncached_tokens(flight)  # noqa: E731 - asked only if needed
        entry = QueueEntry(flight.request_id, flight.arrival_s, flight.input_tokens, uncached, policy_class)
        return self.queue.offer(flight, entry, self.loads()), busy

    def pop_ready(self) -> Flight | None:
        """The next waiting request that may go now (None: none may, or no queue)."""
        return None if self.queue is None else self.queue.pop_ready(self.loads())

    def loads(self) -> list[WorkerLoad]:
        return [self.router.loads[w] for w in self.router.workers]

    def _uncached_tokens(self, flight: Flight) -> int:
        """The prompt less its best cached prefix over the stage's workers (the queue's key)."""
        num_full = flight.input_tokens // self._block_size
        best = max(self._overlap(w, flight.prompt_hashes, num_full) for w in self.router.workers)
        return flight.input_tokens - best * self._block_size
