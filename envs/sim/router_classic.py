"""Two classic routers beside Dynamo's KV router: SGLang's `cache_aware` policy and llm-d's
default weighted scorers.

`cache_aware`: SGLang's router (repo sgl-project/sglang, `sgl-model-gateway/src/policies/
cache_aware.rs`, formerly `sgl-router/src/policies/cache_aware.rs`). A worker's load is the
gateway's count of its in-flight requests. The load is imbalanced when

    max_load - min_load > balance_abs_threshold  and  max_load > balance_rel_threshold * min_load

and then the request goes to the least-loaded worker. Otherwise it goes to the worker with the
longest cached prefix when that prefix's match rate (matched / prompt length) exceeds
`cache_threshold`, and else to the least-loaded worker: so since sglang#14650 (December 2025);
before it, to the worker with the smallest approximate tree (`sglang_miss_fallback:
smallest_tree`). Least-loaded takes the first of equal minima, as Rust's `min_by_key` does. The
defaults are what a launched router gets, `sgl-model-gateway/src/main.rs` and
`bindings/python/src/sglang_router/router_args.py`: cache_threshold 0.3, balance_abs_threshold 64,
balance_rel_threshold 1.5 (the library's `CacheAwareConfig::default()` in `src/policies/mod.rs`,
which only tests and embedders get, has 0.5, 32 and 1.1).

Documented simplifications: SGLang matches the prompt's characters against an approximate radix
tree of the requests it routed to each worker; here the match is the true cached prefix in blocks
(matched tokens = blocks x block size over the prompt's tokens), so it also sees evictions SGLang's
tree misses. Ties between workers holding the longest match break at random (the tree takes one
tenant of the matched node: the first in its DashMap, or lately the one that last touched it).
The smallest-tree fallback keeps the router's own tree: the distinct prompt blocks it has routed
to each worker, never evicted (SGLang trims its tree to 2^26 characters every 120 s).

`llm_d`: the llm-d inference scheduler's default profile (repo llm-d/llm-d-inference-scheduler,
now module llm-d/llm-d-router, `pkg/epp/config/loader/defaults.go`; the same weights as the llm-d
inference-scheduling guide). Each scorer maps a worker to [0, 1], higher is better; the picker
takes the largest weighted sum, ties at random (`picker/maxscore` shuffles, then sorts stably):

    prefix-cache-scorer          x 3   matched blocks / prompt blocks (at most 256 blocks)
    kv-cache-utilization-scorer  x 2   1 - kv_cache_usage_perc
    queue-scorer                 x 2   (max_q - q) / (max_q - min_q) over num_requests_waiting,
                                       1 on every worker when all queues are equal

llm-d reads the two gauges from each engine's metrics (scraped, so slightly stale; here exact)
and estimates the prefix from its own index of routed prompts (here the true cached prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from envs.sim.config import RouterConfig

CLASSIC_MODES = frozenset({"cache_aware", "llm_d"})
# llm-d's approximate prefix index hashes at most this many blocks of a prompt
# (`defaultMaxPrefixBlocks`, `dataproducer/approximateprefix/types.go`).
LLM_D_MAX_PREFIX_BLOCKS = 256


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """The two gauges llm-d scrapes from a worker: vLLM's `num_requests_waiting` and
    `kv_cache_usage_perc` (the fraction of KV blocks held by requests; cached blocks that no
    request holds count as free)."""

    num_waiting: int
    kv_usage: float


class EngineMetricsOracle(Protocol):
    """Reads a worker's engine metrics at the moment of routing."""

    def __call__(self, worker: int) -> EngineMetrics: ...


def is_imbalanced(in_flight: Sequence[int], abs_threshold: int, rel_threshold: float) -> bool:
    """SGLang's imbalance test: both the absolute and the relative gap are exceeded."""
    high, low = max(in_flight), min(in_flight)
    return high - low > abs_threshold and high > low * rel_threshold


def first_min(values: Sequence[float]) -> int:
    """Index of the first smallest value (Python's `min`, like Rust's `min_by_key`, keeps the
    first of equal minima)."""
    return min(range(len(values)), key=values.__getitem__)


def random_argmax(values: Sequence[float], rng: np.random.Generator) -> int:
    """Index of the largest value, ties uniformly at random (no draw when there is no tie)."""
    best = max(values)
    ties = [i for i, value in enumerate(values) if value == best]
    return ties[0] if len(ties) == 1 else ties[int(rng.integers(len(ties)))]


def match_rate(overlap_blocks: int, isl_tokens: int, block_size: int) -> float:
    """The share of the prompt's tokens in its cached prefix (SGLang's matched / prompt chars)."""
    return overlap_blocks * block_size / isl_tokens


def cache_aware_select(
    in_flight: Sequence[int],
    overlaps: Sequence[int],
    isl_tokens: int,
    block_size: int,
    tree_blocks: Sequence[int],
    config: RouterConfig,
    rng: np.random.Generator,
) -> tuple[int, list[float]]:
    """SGLang's pick, and the cost it ranked each worker by (lower is better): the in-flight count
    when it balances load, the negated match rate on a cache hit, the tree size (`tree_blocks`,
    read only by the smallest-tree fallback) on a miss."""
    loads = [float(n) for n in in_flight]
    if is_imbalanced(in_flight, config.sglang_balance_abs_threshold, config.sglang_balance_rel_threshold):
        return first_min(loads), loads
    rates = [match_rate(overlap, isl_tokens, block_size) for overlap in overlaps]
    if max(rates) > config.sglang_cache_threshold:
        return random_argmax(rates, rng), [-rate for rate in rates]
    if config.sglang_miss_fallback == "min_load":
        return first_min(loads), loads
    sizes = [float(size) for size in tree_blocks]
    return random_argmax([-size for size in sizes], rng), sizes


def _unit(score: float) -> float:
    # llm-d clamps every scorer's output to [0, 1] before weighting (`enforceScoreRange`).
    return min(1.0, max(0.0, score))


def llm_d_scores(
    overlaps: Sequence[int],
    isl_tokens: int,
    block_size: int,
    metrics: Sequence[EngineMetrics],
    config: RouterConfig,
) -> list[float]:
    """Each worker's weighted sum of llm-d's three default scorers (higher is better)."""
    prompt_blocks = min(-(-isl_tokens // block_size), LLM_D_MAX_PREFIX_BLOCKS)
    waiting = [m.num_waiting for m in metrics]
    low, high = min(waiting), max(waiting)
    scores = []
    for overlap, m in zip(overlaps, metrics, strict=True):
        prefix = min(overlap, prompt_blocks) / prompt_blocks
        queue = 1.0 if high == low else (high - m.num_waiting) / (high - low)
        score = config.llm_d_prefix_weight * _unit(prefix)
        score += config.llm_d_kv_utilization_weight * _unit(1.0 - m.kv_usage)
        score += config.llm_d_queue_weight * _unit(queue)
        scores.append(score)
    return scores


class ClassicRouting:
    """What the classic routers keep for one routing stage: SGLang's approximate trees (only for
    the smallest-tree fallback) and where llm-d reads engine metrics."""

    def __init__(
        self, config: RouterConfig, workers: list[int], block_size: int, rng: np.random.Generator
    ) -> None:
        self.config = config
        self.workers = workers
        self.block_size = block_size
        self._rng = rng
        keeps_trees = config.mode == "cache_aware" and config.sglang_miss_fallback == "smallest_tree"
        self._trees: list[set[int]] | None = [set() for _ in workers] if keeps_trees else None
        self._metrics: EngineMetricsOracle | None = None

    def set_engine_metrics(self, oracle: EngineMetricsOracle) -> None:
        """Read llm-d's gauges from the engines. Without this, the queue scorer counts the
        router's own in-flight requests and the KV scorer gets no gauge (usage 0, so 1 on every
        worker: what llm-d gives endpoints with no metrics), leaving it no say in the pick."""
        self._metrics = oracle

    def add_worker(self) -> None:
        """The router's worker list grew by one at its end (the list is shared with `Router`)."""
        if self._trees is not None:
            self._trees.append(set())

    def remove_worker(self, index: int) -> None:
        """The worker at `index` left the shared worker list."""
        if self._trees is not None:
            del self._trees[index]

    def tree_blocks(self, index: int) -> int:
        """Distinct prompt blocks routed to the worker at `index` (0 when no tree is kept)."""
        return len(self._trees[index]) if self._trees is not None else 0

    def select(
        self,
        in_flight: list[int],
        overlaps: list[int],
        isl_tokens: int,
        prompt_blocks: tuple[int, ...],
    ) -> tuple[int, list[float]]:
        """The chosen worker's index and the per-worker costs (lower is better) it was ranked by."""
        if self.config.mode == "cache_aware":
            sizes = [self.tree_blocks(i) for i in range(len(self.workers))]
            index, costs = cache_aware_select(
                in_flight, overlaps, isl_tokens, self.block_size, sizes, self.config, self._rng
            )
            if self._trees is not None:
                # SGLang inserts the prompt into the chosen worker's tree on every path.
                self._trees[index].update(prompt_blocks)
            return index, costs
        if self._metrics is not None:
            metrics = [self._metrics(w) for w in self.workers]
        else:
            metrics = [EngineMetrics(n, 0.0) for n in in_flight]
        scores = llm_d_scores(overlaps, isl_tokens, self.block_size, metrics, self.config)
        return random_argmax(scores, self._rng), [-score for score in scores]
