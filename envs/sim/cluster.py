"""A simulated Dynamo deployment: workload, routers, workers and the P->D KV transfer.

Aggregated flow: the router picks a worker, which prefills and decodes.
Disaggregated flow (Dynamo 1.6.1): the prefill router (KV-aware, no decode-block tracking) picks
a prefill worker; when its prefill pass ends, the decode router (credit 0, no prefill tracking,
no KV-reuse assumption, as the frontend forces) picks a decode worker, the prompt's KV moves over
the link (bytes = input tokens x kv_bytes_per_token), the prefill worker's blocks are released,
and the decode worker produces every output token - so TTFT includes one decode pass.

Knobs can change while the simulation runs (`set_router_override`); each request is routed with
the knobs in force when it arrives.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator

import numpy as np
import simpy

from envs.sim.admission import Admission, FirstStageQueue
from envs.sim.busy import BusyMonitor, BusyThresholds, Rejection
from envs.sim.conditional_route import ConditionalRouting
from envs.sim.config import RouterConfig, ScenarioConfig
from envs.sim.engine import Engine
from envs.sim.flight import Flight
from envs.sim.knobs import DecodeStageKnobs, Knobs, merge_override
from envs.sim.records import RequestRecord, RouteDecision, Stage
from envs.sim.router import Router
from envs.sim.router_classic import EngineMetrics
from envs.sim.scaling import Scaler
from envs.sim.sequence import Sequence
from envs.sim.sources import TrafficSources
from envs.sim.timing import TimingModel
from envs.sim.workload import Session, Turn, prompt_block_hashes, sequence_block_hashes

ProgressHook = Callable[[float, int], None]


class Cluster:
    """The whole simulated deployment on one simpy environment."""

    def __init__(
        self,
        scenario: ScenarioConfig,
        sessions: Iterator[Session],
        timing: TimingModel,
        routing_rng: np.random.Generator,
        block_tokens: int,
    ) -> None:
        self.scenario = scenario
        self.env = simpy.Environment()
        self.records: list[RequestRecord] = []
        self.rejections: list[Rejection] = []  # requests turned away (all workers of a pool busy)
        self.block_tokens = block_tokens
        self.sources = TrafficSources(
            self.env, sessions, scenario, self._dispatch, lambda: self._num_dispatched
        )
        self._request_ids = itertools.count()
        self._num_dispatched = 0
        self._num_first_tokens = 0
        self._knobs = Knobs.from_config(scenario.router)
        self._progress: ProgressHook | None = None
        self._pending_sources: dict[int, Sequence] = {}
        self._decode_knobs = DecodeStageKnobs(scenario.router)
        self._build_workers(timing)
        self._busy = BusyMonitor(BusyThresholds.of(scenario.router), self.engines)
        self._build_routers(routing_rng)
        first_kind = "agg" if self.decode_router is None else "prefill"
        self.admission = Admission(
            scenario, self.router, self._busy, self._overlap, self.block_size, first_kind
        )
        self.conditional = ConditionalRouting.of(
            scenario.router, self.router, self.decode_router, self.engines
        )
        self.scaler = Scaler(self, scenario.scaling)
        if any(engine.tiers is not None for engine in self.engines):
            self.router.set_tier_overlap(self._tier_overlap)

    # -- construction -------------------------------------------------------------------------

    def _build_workers(self, timing: TimingModel) -> None:
        topo = self.scenario.topology
        if topo.mode == "agg":
            kinds = ["agg"] * topo.num_workers
        else:
            kinds = ["prefill"] * topo.num_prefill_workers + ["decode"] * topo.num_decode_workers
        self._timing = timing
        self.engines: list[Engine] = []
        self._pools: list = []  # block pools by worker id, for the routers
        for kind in kinds:
            self.add_engine(kind)
        self.block_size = self.engines[0].block_size
        if any(engine.block_size != self.block_size for engine in self.engines):
            raise ValueError("all workers of a deployment must use the same block_size")

    def add_engine(self, kind: str) -> Engine:
        """A new worker of `kind` with the next id; routers learn of it separately (`Scaler`)."""
        engine = Engine(
            self.env,
            len(self.engines),
            kind,
            self.scenario.engine_for(kind),
            self._timing,
            self._on_first_token,
            self._on_done,
            self.scenario.model.kv_bytes_per_token,
        )
        self.engines.append(engine)
        self._pools.append(engine.pool)
        return engine

    def stage_router(self, kind: str) -> Router:
        """The router whose candidates are the workers of `kind`."""
        if kind == "decode":
            assert self.decode_router is not None
            return self.decode_router
        return self.router

    def _build_routers(self, rng: np.random.Generator) -> None:
        config = self.scenario.router

        def stage(kind: str, stage: Stage, stage_config: RouterConfig) -> Router:
            workers = [e.worker_id for e in self.engines if e.kind == kind]
            router = Router(stage_config, stage, workers, self.block_size, self._overlap, rng)
            if config.router_semantics == "dynamo-0.9":
                router.tree_size = self._tree_size
            router.set_engine_metrics(self._engine_metrics)
            return router

        if self.scenario.topology.mode == "agg":
            self.router, self.decode_router = stage("agg", Stage.AGG, config), None
            return
        # Dynamo's prefill router books no decode blocks.
        self.router = stage("prefill", Stage.PREFILL, dataclasses.replace(config, track_active_blocks=False))
        self.decode_router = stage("decode", Stage.DECODE, config)

    def _engine_metrics(self, worker: int) -> EngineMetrics:
        # What llm-d scrapes from vLLM: waiting requests and the fraction of KV blocks in use.
        engine = self.engines[worker]
        return EngineMetrics(len(engine.waiting), engine.pool.num_active / engine.pool.num_blocks)

    def _tree_size(self, worker: int) -> int:
        return self._pools[worker].num_cached

    def _overlap(self, worker: int, block_hashes: tuple[int, ...], num_blocks: int) -> int:
        return self._pools[worker].match_prefix(block_hashes, num_blocks)

    def _tier_overlap(
        self, worker: int, block_hashes: tuple[int, ...], start: int, limit: int
    ) -> tuple[int, int]:
        tiers = self.engines[worker].tiers
        return (0, 0) if tiers is None else tiers.match(block_hashes, start, limit, self.env.now)

    # -- control ------------------------------------------------------------------------------

    @property
    def knobs(self) -> Knobs:
        return self._knobs

    def set_router_override(self, override: dict[str, float | bool | None] | None) -> None:
        """Route every request from now on with the scenario's knobs plus this override."""
        self._knobs = merge_override(self.scenario.router, override)

    @property
    def busy_thresholds(self) -> BusyThresholds:
        return self._busy.thresholds

    def set_busy_thresholds(self, update: dict[str, float | int | None]) -> None:
        """Merge new busy thresholds in, as the frontend's `POST /busy_threshold` does; they hold
        for every request routed from now on."""
        self._busy.set_thresholds(self._busy.thresholds.merged(update))

    def on_progress(self, hook: ProgressHook) -> None:
        self._progress = hook

    @property
    def now_s(self) -> float:
        return self.env.now

    @property
    def num_dispatched(self) -> int:
        """Requests sent so far (router-queued ones included)."""
        return self._num_dispatched

    @property
    def num_in_flight(self) -> int:
        """Requests sent and neither finished nor rejected (Dynamo's `inflight_requests`)."""
        return self._num_dispatched - len(self.records) - len(self.rejections)

    @property
    def num_decode_tokens(self) -> int:
        """Tokens emitted by decode passes so far, on every engine: work done, counted live."""
        return sum(engine.stats.num_decode_tokens for engine in self.engines)

    @property
    def router_queue(self) -> FirstStageQueue | None:
        """Dynamo's router queue in front of the first stage (None without one)."""
        return self.admission.queue

    @property
    def num_awaiting_first_token(self) -> int:
        """Requests still waiting for their first token (Dynamo's `queued_requests`)."""
        return self._num_dispatched - self._num_first_tokens

    # -- workload -----------------------------------------------------------------------------

    def start_open_loop(self, starts: Iterator[float]) -> None:
        self.sources.start_open_loop(starts)

    def start_closed_loop(self, concurrency: Callable[[float], int], change_times: list[float]) -> None:
        self.sources.start_closed_loop(concurrency, change_times)

    @property
    def workload_done(self) -> bool:
        """No request will arrive any more and none is in flight: the run is over."""
        return self.sources.done and self.num_in_flight == 0

    # -- request flow -------------------------------------------------------------------------

    def _dispatch(
        self, session_id: int, turn_index: int, turn: Turn, first_sent_s: float | None = None
    ) -> Flight:
        self._num_dispatched += 1
        rid = next(self._request_ids)
        knobs = self._knobs
        flight = Flight(rid, session_id, turn_index, self.env.now, turn, knobs)
        if first_sent_s is not None:
            flight.first_sent_s = first_sent_s
        flight.done = self.env.event()
        bs = self.block_size
        flight.prompt_hashes = prompt_block_hashes(turn.hash_ids, turn.input_tokens, self.block_tokens, bs)
        flight.seq_hashes = sequence_block_hashes(
            flight.prompt_hashes, turn.input_tokens, turn.output_tokens, bs, rid
        )
        if self.conditional is not None:
            local = self.conditional.plan(rid, turn.input_tokens, flight.prompt_hashes, knobs, self.env.now)
            if local is not None:
                self._run_local(flight, local)
                return flight
        verdict, busy = self.admission.admit(flight, turn.policy_class, self.env.now)
        if verdict == "route":
            self._route_first_stage(flight, busy)
        elif verdict == "rejected":  # every worker busy, or its policy class's queue full (HTTP 529)
            self._reject(flight, self.router.stage)
        return flight

    def _route_first_stage(self, flight: Flight, busy: frozenset[int] = frozenset()) -> None:
        """Route a request to its (prefill or aggregated) worker with the knobs of its arrival,
        among the workers that are not busy."""
        rid, now_s = flight.request_id, self.env.now
        decision = self.router.route(
            rid, flight.input_tokens, flight.prompt_hashes, flight.knobs, now_s, exclude=busy
        )
        flight.decisions.append(decision)
        flight.prefill_worker = decision.chosen
        disagg = self.decode_router is not None
        target = 1 if disagg else flight.output_tokens
        seq = Sequence(
            rid, flight.input_tokens, target, flight.prompt_hashes if disagg else flight.seq_hashes
        )
        seq.owner = flight
        self.engines[decision.chosen].submit(seq)

    def _reject(self, flight: Flight, stage: Stage) -> None:
        """Every worker of the pool is busy: Dynamo answers 529 and the request ends here."""
        flight.rejected = True
        self.rejections.append(
            Rejection(flight.request_id, flight.session_id, flight.turn, self.env.now, stage)
        )
        assert flight.done is not None
        flight.done.succeed()

    def _run_local(self, flight: Flight, decision: RouteDecision) -> None:
        """Conditional disaggregation sent the request to a decode worker whole: it prefills there."""
        flight.decisions.append(decision)
        flight.bypassed = True
        flight.prefill_worker = flight.decode_worker = decision.chosen
        seq = Sequence(flight.request_id, flight.input_tokens, flight.output_tokens, flight.seq_hashes)
        seq.owner = flight
        self.engines[decision.chosen].submit(seq)

    def _drain_queue(self) -> None:
        """A prefill finished or a request left: route waiting requests while a worker has room."""
        while (flight := self.admission.pop_ready()) is not None:
            self._route_first_stage(flight)

    def _on_first_token(self, seq: Sequence, now_s: float) -> None:
        flight: Flight = seq.owner  # type: ignore[assignment]
        engine_kind = self.engines[flight.prefill_worker].kind if flight.decode_worker < 0 else "decode"
        engine_kind = "agg" if flight.bypassed else engine_kind  # prefilled where it decodes
        if engine_kind in ("decode", "agg") and flight.first_token_s < 0:
            self._num_first_tokens += 1
        if engine_kind == "decode":
            flight.first_token_s = now_s
            return
        flight.prefill_start_s = seq.scheduled_s
        flight.prefill_end_s = now_s
        flight.cached_tokens = seq.reused_tokens
        flight.host_cached_tokens, flight.disk_cached_tokens = seq.host_hit_tokens, seq.disk_hit_tokens
        (self.decode_router if flight.bypassed else self.router).prefill_done(flight.request_id)  # type: ignore[union-attr]
        self._drain_queue()
        if engine_kind == "agg":
            flight.first_token_s = now_s

    def _on_done(self, seq: Sequence, now_s: float) -> None:
        flight: Flight = seq.owner  # type: ignore[assignment]
        if self.decode_router is None:
            flight.decode_worker = flight.prefill_worker
            # Reuse is the best over the request's admissions (a preempted request re-admits).
            flight.cached_tokens = seq.reused_tokens
            flight.host_cached_tokens, flight.disk_cached_tokens = seq.host_hit_tokens, seq.disk_hit_tokens
            self.router.free(flight.request_id)
            self._drain_queue()
            self._complete(flight, seq, now_s)
        elif flight.decode_worker < 0:
            self.router.free(flight.request_id)
            self._drain_queue()
            self._hand_off(flight, seq, now_s)
        else:
            self.decode_router.free(flight.request_id)
            self._complete(flight, seq, now_s)

    def _hand_off(self, flight: Flight, prefill_seq: Sequence, now_s: float) -> None:
        """Prefill finished: pick a decode worker and move the prompt's KV blocks there."""
        assert self.decode_router is not None
        busy = self._busy.busy(self.decode_router, self.env.now)
        if busy and len(busy) == len(self.decode_router.workers):
            # Turned away after its prefill: the prompt's blocks are freed on the prefill worker.
            self.engines[flight.prefill_worker].release_at_boundary(prefill_seq)
            self.scaler.check_retired(flight.prefill_worker)
            self._reject(flight, Stage.DECODE)
            return
        knobs = self._decode_knobs(flight.knobs)  # from the knobs in force at arrival
        decision = self.decode_router.route(
            flight.request_id, flight.input_tokens, flight.prompt_hashes, knobs, now_s, exclude=busy
        )
        flight.decisions.append(decision)
        flight.decode_worker = decision.chosen
        link = self.scenario.topology.kv_transfer
        delay_s = link.latency_ms / 1000.0
        if link.bandwidth_gbps > 0:
            delay_s += (
                flight.input_tokens * self.scenario.model.kv_bytes_per_token / (link.bandwidth_gbps * 1e9)
            )
        decode_seq = Sequence(
            flight.request_id, flight.input_tokens, flight.output_tokens, flight.seq_hashes, skip_prefill=True
        )
        decode_seq.owner = prefill_seq.owner = flight
        self._pending_sources[flight.request_id] = prefill_seq
        self.engines[decision.chosen].reserve(decode_seq, delay_s, self._on_transfer)

    def _on_transfer(self, decode_seq: Sequence, finished: bool) -> None:
        """The decode worker reserved the request (the transfer starts) or the transfer ended."""
        flight: Flight = decode_seq.owner  # type: ignore[assignment]
        if flight.transfer_start_s < 0:
            flight.transfer_start_s = self.env.now
        if finished:
            flight.transfer_end_s = self.env.now
            prefill_seq = self._pending_sources.pop(flight.request_id)
            self.engines[flight.prefill_worker].release_at_boundary(prefill_seq)
            self.scaler.check_retired(flight.prefill_worker)

    def _complete(self, flight: Flight, seq: Sequence, now_s: float) -> None:
        if flight.transfer_start_s < 0:
            flight.transfer_start_s = flight.transfer_end_s = flight.prefill_end_s
        record = flight.record(seq.num_preemptions, now_s)
        self.records.append(record)
        assert flight.done is not None
        flight.done.succeed()
        if self._progress is not None and len(self.records) % 256 == 0:
            self._progress(now_s, len(self.records))
