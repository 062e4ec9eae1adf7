"""Conditional disaggregation's plan for one request (`envs.sim.conditional` states the rules):
preview the decode route, decide, and book the decode worker when the request bypasses the
prefill pool."""

from __future__ import annotations

from collections.abc import Sequence

from envs.sim.conditional import ConditionalDisaggConfig, bypasses
from envs.sim.config import RouterConfig
from envs.sim.engine import Engine
from envs.sim.knobs import Knobs
from envs.sim.records import RouteDecision
from envs.sim.router import Router


class ConditionalRouting:
    """Dynamo's `plan_conditional_disagg_decode` over the cluster's two routing stages."""

    def __init__(
        self,
        config: ConditionalDisaggConfig,
        queue_threshold: float | None,
        prefill: Router,
        decode: Router,
        engines: Sequence[Engine],
    ) -> None:
        self.config = config
        # prefill_load's threshold, inherited from the router queue's when unset (Dynamo's rule).
        self._prefill_busy_frac = config.prefill_busy_threshold
        if self._prefill_busy_frac is None:
            self._prefill_busy_frac = queue_threshold
        self._prefill, self._decode, self._engines = prefill, decode, engines
        self.num_bypassed = 0

    @classmethod
    def of(
        cls, router: RouterConfig, prefill: Router, decode: Router | None, engines: Sequence[Engine]
    ) -> ConditionalRouting | None:
        """The deployment's conditional routing, or None where it is off (or nothing to bypass)."""
        if router.conditional_disagg is None or decode is None:
            return None
        return cls(router.conditional_disagg, router.router_queue_threshold, prefill, decode, engines)

    def plan(
        self, request_id: int, isl_tokens: int, block_hashes: tuple[int, ...], knobs: Knobs, now_s: float
    ) -> RouteDecision | None:
        """The booked decode route of a request that bypasses the prefill pool, or None."""
        decode = self._decode
        decision, seen = decode.preview(isl_tokens, block_hashes, knobs, now_s)
        chosen = decision.chosen
        cached_tokens = decision.overlap_blocks[decision.candidates.index(chosen)] * decode.block_size
        policy = self.config.policy
        prefill_busy = policy != "isl_bounding" and self._prefill_busy(isl_tokens, block_hashes, knobs, now_s)
        if not bypasses(
            self.config, isl_tokens, cached_tokens, prefill_busy, self._over_guard(chosen, isl_tokens)
        ):
            return None
        decode.book(request_id, chosen, isl_tokens, block_hashes, seen, knobs)
        self.num_bypassed += 1
        return decision

    def _prefill_busy(
        self, isl_tokens: int, block_hashes: tuple[int, ...], knobs: Knobs, now_s: float
    ) -> bool:
        """The prefill worker the prefill router would pick now (a dry run) is prefill-busy."""
        assert self._prefill_busy_frac is not None  # RouterConfig's validator
        decision, _ = self._prefill.preview(isl_tokens, block_hashes, knobs, now_s)
        worker = decision.chosen
        budget = self._engines[worker].config.max_num_batched_tokens
        return self._prefill.loads[worker].active_prefill_tokens > self._prefill_busy_frac * budget

    def _over_guard(self, worker: int, isl_tokens: int) -> bool:
        """The decode guard: the worker's booked blocks plus the request's pass the threshold
        share of its KV blocks (no reservation: requests at one instant can race past it)."""
        threshold = self.config.decode_busy_threshold
        if threshold is None:
            return False
        pool = self._engines[worker].pool
        blocks = self._decode.loads[worker].active_decode_blocks + -(-isl_tokens // self._decode.block_size)
        return blocks > threshold * pool.num_blocks
