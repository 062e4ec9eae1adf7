"""Dynamo's busy thresholds: load shedding in front of each pool of workers.

Dynamo 1.6.1 (`--active-decode-blocks-threshold`, `--active-prefill-tokens-threshold`,
`--active-prefill-tokens-threshold-frac`; at run time `POST /busy_threshold` on the frontend;
`lib/llm/src/discovery/worker_monitor.rs`):

- a worker is busy when any threshold that is set is exceeded (all comparisons strict):
  its active prefill tokens > `active_prefill_tokens_threshold`, or > `..._frac` x its
  `max_num_batched_tokens`, or its used KV blocks > `active_decode_blocks_threshold` x its
  total blocks; used blocks are the router's booked decode blocks or the blocks the worker
  reports in use (Dynamo keeps whichever came last; the larger of the two is taken here);
- busy workers are not candidates; when every worker of a pool is busy the request is rejected
  ("All workers are busy, please retry later", HTTP 529, counted in
  `dynamo_frontend_model_rejection_total`);
- each pool (aggregated, prefill, decode) is judged on its own, at the moment a request is
  routed to it: a disaggregated request can be turned away by the decode pool after its prefill.

With every threshold unset nothing is ever rejected (Dynamo's default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from envs.sim.config import RouterConfig
from envs.sim.engine import Engine
from envs.sim.records import Stage
from envs.sim.router import Router

THRESHOLD_FIELDS: tuple[str, ...] = (
    "active_decode_blocks_threshold",
    "active_prefill_tokens_threshold",
    "active_prefill_tokens_threshold_frac",
)


@dataclass(frozen=True, slots=True)
class BusyThresholds:
    """One model's busy thresholds; None turns a rule off. Validated as `POST /busy_threshold`
    validates them: the decode fraction in [0, 1], the others finite and >= 0."""

    active_decode_blocks_threshold: float | None = None
    active_prefill_tokens_threshold: int | None = None
    active_prefill_tokens_threshold_frac: float | None = None

    def __post_init__(self) -> None:
        for name in THRESHOLD_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        decode = self.active_decode_blocks_threshold
        if decode is not None and decode > 1:
            raise ValueError(f"active_decode_blocks_threshold is a fraction in [0, 1], got {decode}")
        tokens = self.active_prefill_tokens_threshold
        if tokens is not None and tokens != int(tokens):
            raise ValueError(f"active_prefill_tokens_threshold is a token count, got {tokens}")

    @classmethod
    def of(cls, router: RouterConfig) -> BusyThresholds:
        """A router config's startup thresholds (`--active-*-threshold*`)."""
        return cls(*(getattr(router, name) for name in THRESHOLD_FIELDS))

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) is not None for name in THRESHOLD_FIELDS)

    def merged(self, update: Mapping[str, float | int | None]) -> BusyThresholds:
        """These thresholds with `update`'s set fields in force, as `POST /busy_threshold` merges
        them (a None leaves a field as it is; there is no way to unset one).

        Raises:
            ValueError: an unknown field, or a value that breaks a rule.
        """
        unknown = sorted(set(update) - set(THRESHOLD_FIELDS))
        if unknown:
            known = ", ".join(THRESHOLD_FIELDS)
            raise ValueError(f"busy thresholds: unknown field(s) {unknown}; known: {known}")
        fields = {name: value for name, value in update.items() if value is not None}
        if "active_prefill_tokens_threshold" in fields:
            tokens = fields["active_prefill_tokens_threshold"]
            if isinstance(tokens, float) and math.isfinite(tokens):
                fields["active_prefill_tokens_threshold"] = round(tokens)
        return replace(self, **fields) if fields else self

    def is_busy(
        self,
        active_prefill_tokens: int,
        used_blocks: int,
        total_blocks: int,
        max_num_batched_tokens: int,
    ) -> bool:
        """Whether a worker with this load is busy (see the module docstring)."""
        if prefill_busy(
            active_prefill_tokens,
            max_num_batched_tokens,
            self.active_prefill_tokens_threshold,
            self.active_prefill_tokens_threshold_frac,
        ):
            return True
        decode = self.active_decode_blocks_threshold
        return decode is not None and used_blocks > decode * total_blocks


def prefill_busy(
    active_prefill_tokens: int, max_num_batched_tokens: int, tokens: int | None, frac: float | None
) -> bool:
    """Dynamo's prefill-busy rule, shared by the worker monitor's thresholds and each router
    policy class's (`prefill_busy_threshold`, `..._frac`): strictly over either one that is set."""
    if tokens is not None and active_prefill_tokens > tokens:
        return True
    return frac is not None and active_prefill_tokens > frac * max_num_batched_tokens


class Rejection(NamedTuple):
    """A request Dynamo turned away: every worker of the pool that was to take it was busy."""

    request_id: int
    session_id: int
    turn: int
    time_s: float
    stage: Stage


class BusyMonitor:
    """Dynamo's worker monitor: each stage's busy workers, as the frontend knows them. It
    recomputes the set after each booking, asynchronously, so requests that arrive at one instant
    all see the set from before it (a burst is not turned away by its own bookings)."""

    def __init__(self, thresholds: BusyThresholds, engines: Sequence[Engine]) -> None:
        self.thresholds = thresholds
        self._engines = engines
        self._seen: dict[Stage, tuple[float, frozenset[int]]] = {}

    def set_thresholds(self, thresholds: BusyThresholds) -> None:
        self.thresholds = thresholds
        self._seen.clear()

    def busy(self, router: Router, now_s: float) -> frozenset[int]:
        if not self.thresholds.enabled:  # Dynamo's default: the hot path pays nothing
            return frozenset()
        seen = self._seen.get(router.stage)
        if seen is None or seen[0] != now_s:
            seen = (now_s, _busy_workers(self.thresholds, router, self._engines))
            self._seen[router.stage] = seen
        return seen[1]


def _busy_workers(thresholds: BusyThresholds, router: Router, engines: Sequence[Engine]) -> frozenset[int]:
    """The workers of a routing stage that the thresholds pass over now: the router's own books
    for prefill tokens and decode blocks, the engine's pool for the blocks it reports in use."""
    loads = router.loads
    return frozenset(
        w
        for w in router.workers
        if thresholds.is_busy(
            loads[w].active_prefill_tokens,
            max(loads[w].active_decode_blocks, engines[w].pool.num_active),
            engines[w].pool.num_blocks,
            engines[w].config.max_num_batched_tokens,
        )
    )
