"""The P/D lever live: the sidecar moves workers between a local deployment's pools.

The policy's `num_prefill_workers`, rounded and held in [1, budget - 1], becomes the prefill
pool's size and the rest of the budget the decode pool's, every `lever_every` intervals: the
simulator's rule (`envs.levers.LeverDriver`). The move itself is `envs.live.pools.move_to`, run
in a thread so the control loop keeps its cadence; while one runs no other is issued. Only a
policy's own decision moves workers: the safe setting holds the split, since moving workers is
not what a sidecar that lost its metrics or its policy should do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from envs.errors import UserError
from envs.levers import prefill_target
from envs.live.deploy import Deployment
from envs.live.pools import DRAIN_GRACE_S, MoveReport, PoolError, check_movable, move_to, serving
from envs.sim.knobs import KnobRange

PD_LEVER = "num_prefill_workers"
OUTCOMES = ("started", "done", "failed", "in_progress")
log = logging.getLogger("poa_gym.sidecar")


class PoolMover:
    """Issues the P/D lever's moves on one local deployment, one at a time."""

    def __init__(self, workdir: Path, budget: int, lever_every: int, grace_s: float = DRAIN_GRACE_S) -> None:
        if lever_every < 1:
            raise UserError(f"--lever-every: must be >= 1, got {lever_every}")
        self.workdir = workdir
        self.budget = budget
        self.lever_every = lever_every
        self.grace_s = grace_s
        self.last_report: MoveReport | None = None
        self._task: asyncio.Task[MoveReport] | None = None
        self._moves: Counter | None = None
        self._size: Gauge | None = None

    @classmethod
    def for_workdir(cls, workdir: Path, lever_every: int) -> PoolMover:
        """Raises PoolError (a UserError) for a deployment whose workers cannot move."""
        workdir = workdir.resolve()
        return cls(workdir, check_movable(Deployment.load(workdir)), lever_every)

    def register(self, registry: CollectorRegistry) -> None:
        self._moves = Counter(
            "poa_gym_sidecar_pd_moves", "P/D moves, by outcome", ["outcome"], registry=registry
        )
        self._size = Gauge("poa_gym_sidecar_prefill_workers", "prefill pool size", registry=registry)
        for outcome in OUTCOMES:
            self._moves.labels(outcome)
        self._size.set(self.num_prefill())

    def check_range(self, knobs: Sequence[KnobRange], source: str) -> None:
        """A policy's lever range must fit the budget, as the environment's `check_levers` says."""
        for knob in knobs:
            if knob.name == PD_LEVER and (knob.low < 1 or knob.high > self.budget - 1):
                raise UserError(
                    f"{source}: knob {PD_LEVER} range [{knob.low:g}, {knob.high:g}] must lie in "
                    f"[1, {self.budget - 1}] (scaling.max_workers {self.budget} leaves one decode worker)"
                )

    def num_prefill(self) -> int:
        return len(serving(Deployment.load(self.workdir).processes, "prefill"))

    @property
    def moving(self) -> bool:
        return self._task is not None and not self._task.done()

    def maybe_move(self, value: float, interval: int) -> str:
        """Move to the value's split on the lever's cadence; what happened, in a word."""
        if interval % self.lever_every:
            return "cadence"
        if self.moving:
            self._count("in_progress")
            return "in_progress"
        target = prefill_target(value, self.budget)
        if target == self.num_prefill():
            return "hold"
        self._count("started")
        log.info("moving to %d prefill / %d decode workers", target, self.budget - target)
        self._task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(move_to, self.workdir, target, grace_s=self.grace_s, log=log.info)
        )
        self._task.add_done_callback(self._finished)
        return "started"

    async def wait(self) -> None:
        """Let a move in progress finish (a half-made move would leave the pools off budget)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _finished(self, task: asyncio.Task[MoveReport]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None or task.cancelled():
            self._count("failed")
            log.warning("P/D move failed: %s", error if isinstance(error, PoolError) else repr(error))
            return
        report = task.result()
        self.last_report = report
        self._count("done")
        steps = ", ".join(f"{s.action} {s.name} {s.duration_s:.1f} s" for s in report.steps)
        log.info("P/D move done in %.1f s: %s", report.duration_s, steps)
        if self._size is not None:
            self._size.set(report.num_prefill)

    def _count(self, outcome: str) -> None:
        if self._moves is not None:
            self._moves.labels(outcome).inc()


def health(mover: PoolMover | None) -> dict[str, Any]:
    """The lever's part of the sidecar's /health."""
    if mover is None:
        return {}
    split = {"num_prefill_workers": mover.num_prefill(), "budget": mover.budget, "moving": mover.moving}
    return {"pd": split}
