"""The simulator's `/metrics`: a running `MetricsSnapshot` of a `Cluster`, as Dynamo's frontend
would expose it.

Requests enter the histograms and counters when they finish (the records are the simulator's
single source of truth): TTFT, each request's inter-token gaps (its mean gap, counted once per
gap), its input, cached and output tokens. Dynamo observes TTFT at the first token instead, so a
snapshot's TTFT histogram lags the live one by one request lifetime (under a second in the
paper presets, against a 5-s control interval). Gauges are read live: in-flight and queued
requests from the cluster, per-worker load from the router's own view, as Dynamo's
`worker_active_*` gauges are.
"""

from __future__ import annotations

import numpy as np

from envs.metrics_snapshot import ITL_BUCKETS_S, TTFT_BUCKETS_S, Histogram, MetricsSnapshot, WorkerGauge
from envs.sim.cluster import Cluster


class SimMetrics:
    """Cumulative frontend metrics of one simulated deployment."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._ttft_bounds = np.asarray(TTFT_BUCKETS_S)
        self._itl_bounds = np.asarray(ITL_BUCKETS_S)
        self._ttft_counts = np.zeros(len(self._ttft_bounds) + 1)
        self._itl_counts = np.zeros(len(self._itl_bounds) + 1)
        self._ttft_sum_s = self._itl_sum_s = 0.0
        self._num_seen = 0
        self._output_tokens = self._input_tokens = self._cached_tokens = 0
        self._total_kv_blocks = float(
            sum(engine.pool.num_blocks for engine in cluster.engines if engine.kind != "prefill")
        )

    def snapshot(self) -> MetricsSnapshot:
        """Fold in the requests finished since the last call, then read the gauges."""
        self._observe_new_records()
        cluster = self._cluster
        return MetricsSnapshot(
            time_s=cluster.now_s,
            ttft=_histogram(TTFT_BUCKETS_S, self._ttft_counts, self._ttft_sum_s),
            itl=_histogram(ITL_BUCKETS_S, self._itl_counts, self._itl_sum_s),
            requests_total=float(self._num_seen),
            output_tokens_total=float(self._output_tokens),
            input_tokens_total=float(self._input_tokens),
            cached_tokens_total=float(self._cached_tokens),
            inflight_requests=float(cluster.num_in_flight),
            queued_requests=float(cluster.num_awaiting_first_token),
            total_kv_blocks=self._total_kv_blocks,
            workers=self._worker_gauges(),
        )

    def _observe_new_records(self) -> None:
        new = self._cluster.records[self._num_seen :]
        if not new:
            return
        self._num_seen += len(new)
        ttft = np.fromiter((r.ttft_s for r in new), float, len(new))
        self._ttft_counts += np.bincount(_bucket(self._ttft_bounds, ttft), minlength=len(self._ttft_counts))
        self._ttft_sum_s += float(ttft.sum())
        gaps = [(r.mean_itl_s, r.output_tokens - 1) for r in new if r.output_tokens > 1]
        if gaps:
            itl = np.array([g for g, _ in gaps], dtype=float)
            weights = np.array([n for _, n in gaps], dtype=float)
            self._itl_counts += np.bincount(
                _bucket(self._itl_bounds, itl), weights, minlength=len(self._itl_counts)
            )
            self._itl_sum_s += float((itl * weights).sum())
        self._output_tokens += sum(r.output_tokens for r in new)
        self._input_tokens += sum(r.input_tokens for r in new)
        self._cached_tokens += sum(r.cached_tokens for r in new)

    def _worker_gauges(self) -> tuple[WorkerGauge, ...]:
        cluster = self._cluster
        routers = [r for r in (cluster.router, cluster.decode_router) if r is not None]
        gauges = []
        for router in routers:
            for worker in router.workers:
                load = router.loads[worker]
                kind = cluster.engines[worker].kind
                gauges.append(
                    WorkerGauge(
                        worker, kind, float(load.active_decode_blocks), float(load.active_prefill_tokens)
                    )
                )
        return tuple(gauges)


def _bucket(bounds: np.ndarray, values_s: np.ndarray) -> np.ndarray:
    # Prometheus buckets are `le`: a value equal to a bound belongs to that bound's bucket.
    return np.searchsorted(bounds, values_s, side="left")


def _histogram(bounds: tuple[float, ...], counts: np.ndarray, total_s: float) -> Histogram:
    cumulative = np.cumsum(counts)
    return Histogram(bounds, tuple(cumulative[:-1].tolist()), total_s, float(cumulative[-1]))
