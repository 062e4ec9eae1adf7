"""Moving workers between the prefill and decode pools while a deployment runs.

The semantics are Dynamo's offline replay's (its scaling hook, which Dynamo's own Planner drives):

- a tick hands a `ScalingSnapshot` to a `ScalingPolicy`, which answers absolute targets per pool
  (None: unchanged) and when to tick next (None: never again);
- a scale-up starts a new worker (a new id), which takes requests after `startup_s`;
- a scale-down drains the highest-numbered worker of the pool, a starting one included: it is
  taken off its router at once, finishes what it holds (its hand-offs' KV transfers too) and
  then leaves;
- in an aggregated deployment the one pool is the decode pool, as in the replay.

The snapshot carries what the replay's does: the pools' active, starting and draining ids, each
active worker's last forward pass (Dynamo's ForwardPassMetrics) and the traffic since the last
tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import simpy

from envs.sim.config import ScaleStep, ScalingConfig
from envs.sim.engine import Engine
from envs.sim.metrics import summarize
from envs.sim.records import RequestRecord
from envs.sim.router import Router


@dataclass(frozen=True, slots=True)
class WorkerPass:
    """One worker's last forward pass and its queues, as the mocker's ForwardPassMetrics."""

    worker_id: int
    wall_time_s: float
    num_prefill_requests: int
    sum_prefill_tokens: int
    sum_prefill_kv_tokens: int
    num_decode_requests: int
    sum_decode_kv_tokens: int
    num_queued_prefill: int
    sum_queued_prefill_tokens: int
    num_queued_decode: int
    sum_queued_decode_kv_tokens: int


@dataclass(frozen=True, slots=True)
class TrafficWindow:
    """What the frontend saw since the last tick (Dynamo's TrafficStats); means over the requests
    that finished in it (zero when none did)."""

    duration_s: float
    num_requests: int  # arrivals: the offered load
    num_finished: int
    mean_isl_tokens: float
    mean_osl_tokens: float
    mean_ttft_s: float
    mean_itl_s: float
    kv_hit_rate: float


@dataclass(frozen=True, slots=True)
class PoolView:
    active: tuple[int, ...] = ()
    starting: tuple[int, ...] = ()
    draining: tuple[int, ...] = ()

    @property
    def num_serving(self) -> int:
        """Workers that count against a target: the active and the starting ones."""
        return len(self.active) + len(self.starting)


@dataclass(frozen=True, slots=True)
class ScalingSnapshot:
    tick: int
    now_s: float
    prefill: PoolView
    decode: PoolView
    passes: dict[int, WorkerPass]
    traffic: TrafficWindow


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    num_prefill: int | None = None
    num_decode: int | None = None
    next_tick_s: float | None = None


class ScalingPolicy(Protocol):
    """Dynamo's Planner (through `eval`'s adapter), a script, or an agent."""

    def initial_tick_s(self) -> float | None: ...

    def on_tick(self, snapshot: ScalingSnapshot) -> ScalingDecision: ...


class ScaledCluster(Protocol):
    """What the scaler moves workers in (`envs.sim.cluster.Cluster`)."""

    env: simpy.Environment
    engines: list[Engine]
    router: Router
    decode_router: Router | None
    records: list[RequestRecord]

    @property
    def now_s(self) -> float: ...

    @property
    def num_dispatched(self) -> int: ...

    @property
    def workload_done(self) -> bool: ...

    def add_engine(self, kind: str) -> Engine: ...

    def stage_router(self, kind: str) -> Router: ...


@dataclass(slots=True)
class _Pool:
    kind: str  # the engines' kind: "agg", "prefill" or "decode"
    active: list[int] = field(default_factory=list)
    starting: list[int] = field(default_factory=list)
    draining: list[int] = field(default_factory=list)

    def view(self) -> PoolView:
        return PoolView(tuple(self.active), tuple(self.starting), tuple(self.draining))


class Scaler:
    """The pools of one `Cluster`, and the moves between them."""

    def __init__(self, cluster: ScaledCluster, config: ScalingConfig) -> None:
        self._cluster = cluster
        self.config = config
        if cluster.decode_router is None:
            self._pools = {"decode": _Pool("agg", list(cluster.router.workers))}
        else:
            self._pools = {
                "prefill": _Pool("prefill", list(cluster.router.workers)),
                "decode": _Pool("decode", list(cluster.decode_router.workers)),
            }
        self._tick = 0
        self._publish = False  # engines publish pass metrics once a policy reads them
        self._last_tick_s = 0.0
        self._seen_dispatched = self._seen_records = 0

    def view(self, pool: str) -> PoolView:
        return self._pools[pool].view() if pool in self._pools else PoolView()

    # -- moves ------------------------------------------------------------------------------

    def scale_to(self, num_prefill: int | None, num_decode: int | None) -> None:
        """Start or drain workers until each pool serves its target (None: unchanged).

        Raises:
            ValueError: a target below 1, a prefill target without a prefill pool, or targets
                over `max_workers`.
        """
        targets = {"prefill": num_prefill, "decode": num_decode}
        if num_prefill is not None and "prefill" not in self._pools:
            raise ValueError("scale_to: an aggregated deployment has no prefill pool (use num_decode)")
        for name, target in targets.items():
            if target is not None and target < 1:
                raise ValueError(f"scale_to: {name} target must be >= 1, got {target}")
        self._check_budget(targets)
        for name, target in targets.items():
            if target is not None and name in self._pools:
                self._scale_pool(self._pools[name], target)

    def _check_budget(self, targets: dict[str, int | None]) -> None:
        budget = self.config.max_workers
        if budget is None:
            return
        total = sum(
            target if target is not None else pool.view().num_serving
            for name, pool in self._pools.items()
            for target in (targets[name],)
        )
        if total > budget:
            raise ValueError(f"scale_to: {total} workers over scaling.max_workers ({budget})")

    def _scale_pool(self, pool: _Pool, target: int) -> None:
        while len(pool.active) + len(pool.starting) < target:
            self._start(pool)
        while len(pool.active) + len(pool.starting) > target:
            self._drain(pool)

    def _start(self, pool: _Pool) -> None:
        cluster = self._cluster
        engine = cluster.add_engine(pool.kind)
        engine.publish_passes = self._publish
        worker = engine.worker_id
        if self.config.startup_s <= 0:
            pool.active.append(worker)
            cluster.stage_router(pool.kind).add_worker(worker)
            return
        pool.starting.append(worker)
        timer = cluster.env.timeout(self.config.startup_s)
        timer.callbacks.append(lambda _event: self._started(pool, worker))

    def _started(self, pool: _Pool, worker: int) -> None:
        if worker not in pool.starting:
            return  # drained before it started
        pool.starting.remove(worker)
        pool.active.append(worker)
        self._cluster.stage_router(pool.kind).add_worker(worker)

    def _drain(self, pool: _Pool) -> None:
        worker = max(pool.active + pool.starting)
        engine = self._cluster.engines[worker]
        if worker in pool.starting:
            pool.starting.remove(worker)  # it never served: it leaves at once
            return
        pool.active.remove(worker)
        pool.draining.append(worker)
        self._cluster.stage_router(pool.kind).remove_worker(worker)
        engine.on_idle = self._retire
        self._retire(engine)

    def _retire(self, engine: Engine) -> None:
        """A draining worker that holds nothing leaves its pool."""
        pool = next((p for p in self._pools.values() if engine.worker_id in p.draining), None)
        if pool is not None and engine.is_idle:
            pool.draining.remove(engine.worker_id)
            engine.on_idle = None

    def check_retired(self, worker: int) -> None:
        """A draining worker gave back blocks outside its loop (a hand-off's transfer ended)."""
        if any(worker in pool.draining for pool in self._pools.values()):
            self._retire(self._cluster.engines[worker])

    # -- ticks ------------------------------------------------------------------------------

    def run(self, policy: ScalingPolicy) -> None:
        """Drive `policy` on the simulation clock from its first tick on."""
        self._publish = True
        for engine in self._cluster.engines:
            engine.publish_passes = True
        first_s = policy.initial_tick_s()
        if first_s is not None:
            self._cluster.env.process(self._ticks(policy, first_s))

    def _ticks(self, policy: ScalingPolicy, at_s: float):  # simpy process
        env = self._cluster.env
        while at_s is not None:
            if at_s > env.now:
                yield env.timeout(at_s - env.now)
            if self._cluster.workload_done:
                return  # the replay stops ticking when its trace is over, too
            decision = policy.on_tick(self.snapshot())
            self.scale_to(decision.num_prefill, decision.num_decode)
            at_s = decision.next_tick_s

    def snapshot(self) -> ScalingSnapshot:
        """The pools, the active workers' last passes and the traffic since the last snapshot."""
        cluster = self._cluster
        now_s = cluster.now_s
        active = [w for pool in self._pools.values() for w in pool.active]
        snapshot = ScalingSnapshot(
            tick=self._tick,
            now_s=now_s,
            prefill=self.view("prefill"),
            decode=self.view("decode"),
            # A worker that has not run a pass yet has published no metrics (the Planner then
            # waits for it: Dynamo reconciles the metrics' worker count with the pool's).
            passes={
                w: worker_pass(cluster.engines[w]) for w in active if cluster.engines[w].stats.num_passes
            },
            traffic=self._traffic(now_s),
        )
        self._tick += 1
        self._last_tick_s = now_s
        return snapshot

    def _traffic(self, now_s: float) -> TrafficWindow:
        cluster = self._cluster
        finished = cluster.records[self._seen_records :]
        arrivals = cluster.num_dispatched - self._seen_dispatched
        self._seen_records, self._seen_dispatched = len(cluster.records), cluster.num_dispatched
        n = len(finished)
        summary = summarize(finished)
        input_tokens = sum(r.input_tokens for r in finished)
        return TrafficWindow(
            duration_s=now_s - self._last_tick_s,
            num_requests=arrivals,
            num_finished=n,
            mean_isl_tokens=input_tokens / n if n else 0.0,
            mean_osl_tokens=sum(r.output_tokens for r in finished) / n if n else 0.0,
            mean_ttft_s=summary.ttft_mean_s if n else 0.0,
            mean_itl_s=summary.itl_mean_s if n else 0.0,
            kv_hit_rate=sum(r.cached_tokens for r in finished) / input_tokens if input_tokens else 0.0,
        )


class ScheduledScaling:
    """A scripted policy: each step's targets at its time (`scaling.schedule`)."""

    def __init__(self, steps: Sequence[ScaleStep]) -> None:
        self._steps = list(steps)
        self._next = 0

    def initial_tick_s(self) -> float | None:
        return self._steps[0].at_s if self._steps else None

    def on_tick(self, snapshot: ScalingSnapshot) -> ScalingDecision:
        step = self._steps[self._next]
        self._next += 1
        next_s = self._steps[self._next].at_s if self._next < len(self._steps) else None
        return ScalingDecision(step.num_prefill, step.num_decode, next_s)


def worker_pass(engine: Engine) -> WorkerPass:
    """The engine's last published pass (`Engine._pass_metrics`) as a `WorkerPass`."""
    return WorkerPass(engine.worker_id, engine.last_pass_s, *engine.last_pass)
