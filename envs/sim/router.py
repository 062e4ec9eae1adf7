"""Dynamo 1.6.1's routers: the KV-aware cost router and the load-based baselines (the classic
`cache_aware` and `llm_d` modes live in `envs.sim.router_classic`).

The KV router's cost for worker w (lower is better; `lib/kv-router` `DefaultWorkerScorer`):

    raw_prefill_blocks_w = (active_prefill_tokens_w + isl) / B          (0 if track_prefill_tokens off)
    decay_w  = 1 / (1 + credit_decay * ((active_prefill_w - min_w' active_prefill_w') / B) / request_blocks)
    credit_w = overlap_score_credit * decay_w * overlap_blocks_w
    cost_w   = prefill_load_scale * max(0, raw_prefill_blocks_w - credit_w)
             + potential_decode_blocks_w + decode_active_request_weight * active_requests_w

Selection takes the argmin with a uniformly random tie-break, or at temperature T > 0 samples
p_w ~ exp(-(cost_w - min) / ((max - min) * T)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from envs.sim.config import RouterConfig
from envs.sim.knobs import Knobs
from envs.sim.records import RouteDecision, Stage
from envs.sim.router_classic import CLASSIC_MODES, ClassicRouting, EngineMetricsOracle


@dataclass(slots=True)
class WorkerLoad:
    """The router's own view of a worker's load (Dynamo's active-sequence slot tracker).

    `active_blocks` counts the distinct prompt blocks booked by in-flight requests (a block
    shared by two requests counts once, when `assume_kv_reuse` books real hashes).
    """

    active_prefill_tokens: int = 0
    active_requests: int = 0
    block_refs: dict[int, int] = field(default_factory=dict)
    anonymous_blocks: int = 0  # blocks booked under random hashes (assume_kv_reuse off)

    @property
    def active_decode_blocks(self) -> int:
        return len(self.block_refs) + self.anonymous_blocks

    def shared_prefix_blocks(self, block_hashes: tuple[int, ...], num_blocks: int) -> int:
        """Leading blocks of a prompt already booked on this worker by in-flight requests."""
        refs = self.block_refs
        shared = 0
        while shared < num_blocks and block_hashes[shared] in refs:
            shared += 1
        return shared


class OverlapOracle(Protocol):
    """Counts the leading blocks of a prompt that a worker has cached (the KV indexer)."""

    def __call__(self, worker: int, block_hashes: tuple[int, ...], num_blocks: int) -> int: ...


class TierOverlapOracle(Protocol):
    """Counts a prompt's blocks found in a worker's lower KV tiers beyond its first `start`
    (device-cached) blocks: (the run in G2 host memory, the run in G3 disk after it)."""

    def __call__(
        self, worker: int, block_hashes: tuple[int, ...], start: int, num_blocks: int
    ) -> tuple[int, int]: ...


def kv_costs(
    loads: list[WorkerLoad],
    overlaps: list[int],
    new_blocks: list[int],
    isl_tokens: int,
    block_size: int,
    knobs: Knobs,
    config: RouterConfig,
    tier_overlaps: list[tuple[int, int]] | None = None,
) -> list[float]:
    """Dynamo 1.6.1's per-worker cost for one request (see the module docstring).

    `overlaps` are the prompt's leading blocks cached on each worker; `new_blocks` the blocks
    the request would add to each worker's booked decode blocks; `tier_overlaps` the (host, disk)
    blocks continuing the device match, credited at `host_cache_hit_weight` and
    `disk_cache_hit_weight` (undecayed, as in Dynamo's `overlap_credit_blocks`).
    """
    request_blocks = max(1, -(-isl_tokens // block_size))  # ceil: only normalises the decay
    track_prefill = knobs.track_prefill_tokens
    decay_k = config.overlap_score_credit_decay if track_prefill else 0.0
    min_prefill = min(load.active_prefill_tokens for load in loads) if decay_k > 0 else 0
    # Hoisted out of the loop: this runs twice per request in a disaggregated deployment.
    credit_scale, load_scale = knobs.overlap_score_credit, knobs.prefill_load_scale
    track_blocks, request_weight = config.track_active_blocks, config.decode_active_request_weight
    costs = []
    for i, (load, overlap, added) in enumerate(zip(loads, overlaps, new_blocks, strict=True)):
        raw_prefill_blocks = (load.active_prefill_tokens + isl_tokens) / block_size if track_prefill else 0.0
        decay = 1.0
        if decay_k > 0:
            excess_blocks = (load.active_prefill_tokens - min_prefill) / block_size
            decay = 1.0 / (1.0 + decay_k * excess_blocks / request_blocks)
        credit = credit_scale * decay * overlap
        if tier_overlaps is not None:
            host_blocks, disk_blocks = tier_overlaps[i]
            credit += config.host_cache_hit_weight * host_blocks + config.disk_cache_hit_weight * disk_blocks
        adjusted = raw_prefill_blocks - credit
        if not adjusted > 0.0:  # max(0, .), as max(0.0, x) would give
            adjusted = 0.0
        decode_blocks = len(load.block_refs) + load.anonymous_blocks + added if track_blocks else 0
        cost = load_scale * adjusted + decode_blocks
        cost += request_weight * load.active_requests
        costs.append(cost)
    return costs


def select_index(
    costs: list[float],
    temperature: float,
    rng: np.random.Generator,
    tree_sizes: SequenceOf[int] | None = None,
) -> int:
    """Dynamo's selection: argmin at T = 0, softmax over min-max-normalised costs at T > 0
    (uniform when all costs are equal).

    Ties at T = 0 go to a uniformly random one (1.6.1); with `tree_sizes` (v0.9) first to the
    workers with the fewest cached blocks, then at random (v0.9 took HashMap order, which Rust
    randomises per process).
    """
    low = min(costs)
    if temperature <= 0:
        if costs.count(low) == 1:  # the common case, without building the tie list
            return costs.index(low)
        ties = [i for i, cost in enumerate(costs) if cost == low]
        if tree_sizes is not None:
            sizes = [tree_sizes[i] for i in ties]
            smallest = min(sizes)
            ties = [i for i, size in zip(ties, sizes, strict=True) if size == smallest]
        return ties[0] if len(ties) == 1 else ties[int(rng.integers(len(ties)))]
    span = max(costs) - low
    if span <= 0:
        return int(rng.integers(len(costs)))
    weights = [math.exp(-(cost - low) / (span * temperature)) for cost in costs]
    total = sum(weights)
    draw = rng.random() * total
    for i, weight in enumerate(weights):
        draw -= weight
        if draw < 0:
            return i
    return len(costs) - 1


class _TreeSizes:
    """The workers' radix-tree sizes, read only for the entries a tie-break looks at (most
    decisions have no tie, and each size asks the worker's block pool)."""

    __slots__ = ("_tree_size", "_workers")

    def __init__(self, tree_size: Callable[[int], int], workers: list[int]) -> None:
        self._tree_size, self._workers = tree_size, workers

    def __getitem__(self, index: int) -> int:
        return self._tree_size(self._workers[index])

    def __len__(self) -> int:
        return len(self._workers)


class Router:
    """One routing stage over a fixed set of workers.

    Holds the per-worker load view; the cluster tells it when a request's prefill finishes
    (`prefill_done`) and when the request leaves the worker (`free`), as Dynamo's frontend does.
    """

    def __init__(
        self,
        config: RouterConfig,
        stage: Stage,
        workers: list[int],
        block_size: int,
        overlap: OverlapOracle,
        rng: np.random.Generator,
    ) -> None:
        self.config = config
        self.stage = stage
        self.workers = workers
        self._candidates = tuple(workers)  # one tuple shared by every decision's record
        self.block_size = block_size
        self.loads = {worker: WorkerLoad() for worker in workers}
        self._overlap = overlap
        self._tier_overlap: TierOverlapOracle | None = None
        # Set for Dynamo v0.9 semantics: ties go to the worker with the smallest radix tree.
        self.tree_size: Callable[[int], int] | None = None
        self._rng = rng
        self._classic = ClassicRouting(config, workers, block_size, rng)
        self._next_rr = 0
        self._booked: dict[int, tuple[int, int, tuple[int, ...], int]] = {}

    def route(
        self,
        request_id: int,
        isl_tokens: int,
        block_hashes: tuple[int, ...],
        knobs: Knobs,
        now_s: float,
        exclude: frozenset[int] = frozenset(),
    ) -> RouteDecision:
        """Pick a worker for a request and book its load there; `exclude` names workers that are
        not candidates this time (Dynamo's busy workers), and must leave one."""
        decision, seen = self.preview(isl_tokens, block_hashes, knobs, now_s, exclude)
        self.book(request_id, decision.chosen, isl_tokens, block_hashes, seen, knobs)
        return decision

    def preview(
        self,
        isl_tokens: int,
        block_hashes: tuple[int, ...],
        knobs: Knobs,
        now_s: float,
        exclude: frozenset[int] = frozenset(),
    ) -> tuple[RouteDecision, int]:
        """The worker the router would pick now, booking nothing (Dynamo's `preview_kv_route`),
        and the prefix blocks it sees cached there."""
        mode = self.config.mode
        num_full = isl_tokens // self.block_size
        overlap = self._overlap
        workers = [w for w in self.workers if w not in exclude] if exclude else self.workers
        candidates = tuple(workers) if exclude else self._candidates
        loads = [self.loads[w] for w in workers]
        # The true overlap goes into the record (PoA-hat prices cache hits whatever the knobs);
        # the router itself sees none when the credit is 0, since Dynamo then has no indexer.
        overlaps = [overlap(w, block_hashes, num_full) for w in workers]
        if mode == "kv":
            seen = overlaps if knobs.overlap_score_credit > 0 else [0] * len(workers)
            new_blocks = self._new_blocks(loads, block_hashes, num_full, knobs)
            tiers = self._tier_overlaps(workers, seen, block_hashes, num_full, knobs)
            costs = kv_costs(loads, seen, new_blocks, isl_tokens, self.block_size, knobs, self.config, tiers)
            sizes = _TreeSizes(self.tree_size, workers) if self.tree_size is not None else None
            index = select_index(costs, knobs.router_temperature, self._rng, sizes)
        elif mode in CLASSIC_MODES:
            # SGLang's and llm-d's routers see the true overlap (envs.sim.router_classic).
            seen = overlaps
            in_flight = [load.active_requests for load in loads]
            index, costs = self._classic.select(in_flight, overlaps, isl_tokens, block_hashes[:num_full])
        else:
            seen = [0] * len(workers)
            costs = [float(load.active_requests) for load in loads]
            index = self._pick_baseline(mode, costs, len(workers))
        decision = RouteDecision(
            self.stage,
            now_s,
            workers[index],
            candidates,
            tuple(costs),
            tuple(overlaps),
            knobs.overlap_score_credit,
            knobs.prefill_load_scale,
            knobs.router_temperature,
        )
        return decision, seen[index]

    def book(
        self,
        request_id: int,
        worker: int,
        isl_tokens: int,
        block_hashes: tuple[int, ...],
        seen_blocks: int,
        knobs: Knobs,
    ) -> None:
        """Book a request's load on `worker`, which sees `seen_blocks` of its prompt cached."""
        self._book(
            request_id, worker, isl_tokens, block_hashes[: isl_tokens // self.block_size], seen_blocks, knobs
        )

    def add_worker(self, worker: int) -> None:
        """A worker joins the stage (a scale-up finished starting): it is a candidate from now on."""
        self.workers.append(worker)
        self.loads.setdefault(worker, WorkerLoad())
        self._candidates = tuple(self.workers)
        self._classic.add_worker()

    def remove_worker(self, worker: int) -> None:
        """A worker leaves the stage (it drains): no new request goes there; what it holds stays
        booked until it finishes, as Dynamo frees a departed worker's requests."""
        index = self.workers.index(worker)
        del self.workers[index]
        self._candidates = tuple(self.workers)
        self._classic.remove_worker(index)

    def set_engine_metrics(self, oracle: EngineMetricsOracle) -> None:
        """Give the `llm_d` mode the engines' waiting queues and KV usage (see `ClassicRouting`)."""
        self._classic.set_engine_metrics(oracle)

    def set_tier_overlap(self, oracle: TierOverlapOracle) -> None:
        """Credit lower-tier (G2/G3) hits too: the workers have KV tiers configured."""
        self._tier_overlap = oracle

    def _tier_overlaps(
        self,
        workers: list[int],
        device: list[int],
        block_hashes: tuple[int, ...],
        num_full: int,
        knobs: Knobs,
    ) -> list[tuple[int, int]] | None:
        """Each worker's (host, disk) blocks continuing its device match; None without tiers or
        with the indexer off (credit 0)."""
        oracle = self._tier_overlap
        if oracle is None or knobs.overlap_score_credit <= 0:
            return None
        return [oracle(w, block_hashes, d, num_full) for w, d in zip(workers, device, strict=True)]

    def _pick_baseline(self, mode: str, active: list[float], n: int) -> int:
        if mode == "round_robin":
            index = self._next_rr % n
            self._next_rr += 1
            return index
        if mode == "random":
            return int(self._rng.integers(n))
        if mode == "power_of_two":
            if n == 1:
                return 0
            a = int(self._rng.integers(n))
            b = (a + 1 + int(self._rng.integers(n - 1))) % n
            return a if active[a] <= active[b] else b
        return select_index(active, 0.0, self._rng)  # least_loaded

    def _new_blocks(
        self, loads: list[WorkerLoad], block_hashes: tuple[int, ...], num_full: int, knobs: Knobs
    ) -> list[int]:
        """Blocks the request would add to each worker's booked set: its full prompt blocks,
        less a prefix already booked there by in-flight requests (with assume_kv_reuse)."""
        if not self.config.track_active_blocks:
            return [0] * len(loads)
        if not knobs.assume_kv_reuse:
            return [num_full] * len(loads)
        new_blocks = []
        for load in loads:  # WorkerLoad.shared_prefix_blocks, inlined: it runs for every worker
            refs, shared = load.block_refs, 0
            while shared < num_full and block_hashes[shared] in refs:
                shared += 1
            new_blocks.append(num_full - shared)
        return new_blocks

    def _book(
        self,
        request_id: int,
        worker: int,
        isl_tokens: int,
        prompt_blocks: tuple[int, ...],
        overlap: int,
        knobs: Knobs,
    ) -> None:
        load = self.loads[worker]
        # The slot tracker books the uncached part of the prompt as prefill load.
        prefill_tokens = max(0, isl_tokens - overlap * self.block_size) if knobs.track_prefill_tokens else 0
        booked: tuple[int, ...] = ()
        anonymous = 0
        if self.config.track_active_blocks:
            if knobs.assume_kv_reuse:
                booked = prompt_blocks
                refs = load.block_refs
                for block_hash in booked:
                    refs[block_hash] = refs.get(block_hash, 0) + 1
            else:
                anonymous = len(prompt_blocks)
                load.anonymous_blocks += anonymous
        load.active_prefill_tokens += prefill_tokens
        load.active_requests += 1
        self._booked[request_id] = (worker, prefill_tokens, booked, anonymous)

    def prefill_done(self, request_id: int) -> None:
        """The request's first token came back: its prompt no longer loads the worker."""
        worker, prefill_tokens, booked, anonymous = self._booked[request_id]
        self.loads[worker].active_prefill_tokens -= prefill_tokens
        self._booked[request_id] = (worker, 0, booked, anonymous)

    def free(self, request_id: int) -> None:
        """The request finished (or left this stage): drop everything booked for it."""
        worker, prefill_tokens, booked, anonymous = self._booked.pop(request_id)
        load = self.loads[worker]
        load.active_prefill_tokens -= prefill_tokens
        load.active_requests -= 1
        load.anonymous_blocks -= anonymous
        refs = load.block_refs
        for block_hash in booked:
            count = refs[block_hash] - 1
            if count:
                refs[block_hash] = count
            else:
                del refs[block_hash]
