"""Prometheus text <-> `MetricsSnapshot`, with prometheus_client doing the text format.

`parse_snapshot` reads a Dynamo frontend's `/metrics` body (the live backend and the sidecar
scrape it); `render_snapshot` writes a snapshot in the same format, so a simulator run can be
served or saved exactly as a live frontend would show it.

Label handling: histograms and counters are summed over every label set (all models, all
statuses), gauges per worker are keyed by `worker_id` (and `dp_rank`, folded into the id).
A metric the exposition lacks reads as 0 (a fresh frontend exposes nothing until the first
request), except the latency histograms, which fall back to empty histograms with our buckets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

from envs import metrics_snapshot as names
from envs.errors import UserError
from envs.metrics_snapshot import (
    ITL_BUCKETS_S,
    TOKEN_BUCKETS,
    TTFT_BUCKETS_S,
    Histogram,
    MetricsSnapshot,
    WorkerGauge,
)


class MetricsFormatError(UserError, ValueError):
    """A `/metrics` body that is not valid Prometheus text, or a value that cannot be a count."""


def parse_snapshot(text: str, time_s: float) -> MetricsSnapshot:
    """The snapshot a `/metrics` body describes, stamped with the scrape time."""
    try:
        families = {family.name: family for family in text_string_to_metric_families(text)}
    except ValueError as error:
        raise MetricsFormatError(f"/metrics is not Prometheus text: {error}") from None
    return MetricsSnapshot(
        time_s=time_s,
        ttft=_histogram(families.get(names.TTFT), TTFT_BUCKETS_S),
        itl=_histogram(families.get(names.ITL), ITL_BUCKETS_S),
        requests_total=_sum(families.get(_counter_name(names.REQUESTS_TOTAL))),
        output_tokens_total=_sum(families.get(_counter_name(names.OUTPUT_TOKENS_TOTAL))),
        input_tokens_total=_sum(families.get(names.INPUT_TOKENS), "_sum"),
        cached_tokens_total=_sum(families.get(names.CACHED_TOKENS), "_sum"),
        inflight_requests=_sum(families.get(names.INFLIGHT)),
        queued_requests=_sum(families.get(names.QUEUED)),
        total_kv_blocks=_sum(families.get(names.TOTAL_KV_BLOCKS)),
        workers=_workers(families),
    )


def _counter_name(name: str) -> str:
    # prometheus_client names a counter family without its `_total` suffix.
    return name.removesuffix("_total")


def _sum(family: Metric | None, suffix: str = "") -> float:
    """The family's samples named `family.name + suffix`, summed over every label set (a counter
    family's samples carry `_total`, which prometheus_client strips from the family name)."""
    if family is None:
        return 0.0
    wanted = {family.name + suffix} if suffix else {family.name, family.name + "_total"}
    return float(sum(s.value for s in family.samples if s.name in wanted))


def _histogram(family: Metric | None, default_bounds: tuple[float, ...]) -> Histogram:
    if family is None:
        return Histogram.empty(default_bounds)
    buckets: dict[float, float] = defaultdict(float)
    total_sum = count = 0.0
    for sample in family.samples:
        if sample.name.endswith("_bucket"):
            bound = float(sample.labels["le"])
            if bound != float("inf"):
                buckets[bound] += sample.value
        elif sample.name.endswith("_sum"):
            total_sum += sample.value
        elif sample.name.endswith("_count"):
            count += sample.value
    bounds = tuple(sorted(buckets))
    return Histogram(bounds, tuple(buckets[b] for b in bounds), total_sum, count)


def _workers(families: dict[str, Metric]) -> tuple[WorkerGauge, ...]:
    values: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)
    for metric in (names.WORKER_DECODE_BLOCKS, names.WORKER_PREFILL_TOKENS):
        family = families.get(metric)
        for sample in family.samples if family is not None else ():
            try:
                worker = int(sample.labels.get("worker_id", "0"), 0) + int(
                    sample.labels.get("dp_rank", "0") or 0
                )
            except ValueError:
                raise MetricsFormatError(
                    f"{metric}: worker_id {sample.labels.get('worker_id')!r} is not an integer"
                ) from None
            key = (worker, sample.labels.get("worker_type", "") or "agg")
            values[key][metric] = sample.value
    return tuple(
        WorkerGauge(
            worker_id,
            worker_type,
            gauges.get(names.WORKER_DECODE_BLOCKS, 0.0),
            gauges.get(names.WORKER_PREFILL_TOKENS, 0.0),
        )
        for (worker_id, worker_type), gauges in sorted(values.items())
    )


# -- rendering ----------------------------------------------------------------------------------


class _SnapshotCollector:
    def __init__(self, snapshot: MetricsSnapshot, model: str) -> None:
        self._snapshot = snapshot
        self._model = model

    def collect(self) -> Iterator[Metric]:
        s, model = self._snapshot, self._model
        yield _histogram_family(names.TTFT, "Time to first token", s.ttft, model)
        yield _histogram_family(names.ITL, "Inter-token latency", s.itl, model)
        for name, value in (
            (names.REQUESTS_TOTAL, s.requests_total),
            (names.OUTPUT_TOKENS_TOTAL, s.output_tokens_total),
        ):
            counter = CounterMetricFamily(_counter_name(name), name, labels=["model"])
            counter.add_metric([model], value)
            yield counter
        for name, total in (
            (names.INPUT_TOKENS, s.input_tokens_total),
            (names.CACHED_TOKENS, s.cached_tokens_total),
        ):
            # Only the sums are meaningful: the simulator keeps totals, not per-request counts.
            tokens = Histogram(TOKEN_BUCKETS, (0.0,) * len(TOKEN_BUCKETS), total, 0.0)
            yield _histogram_family(name, name, tokens, model)
        for name, value in (
            (names.INFLIGHT, s.inflight_requests),
            (names.QUEUED, s.queued_requests),
            (names.TOTAL_KV_BLOCKS, s.total_kv_blocks),
        ):
            yield _gauge(name, model, value)
        for name, attribute in (
            (names.WORKER_DECODE_BLOCKS, "active_decode_blocks"),
            (names.WORKER_PREFILL_TOKENS, "active_prefill_tokens"),
        ):
            gauge = GaugeMetricFamily(name, name, labels=["worker_id", "dp_rank", "worker_type"])
            for worker in s.workers:
                label = "" if worker.worker_type == "agg" else worker.worker_type
                gauge.add_metric([str(worker.worker_id), "0", label], getattr(worker, attribute))
            yield gauge


def _gauge(name: str, model: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, name, labels=["model"])
    gauge.add_metric([model], value)
    return gauge


def _histogram_family(
    name: str, documentation: str, histogram: Histogram, model: str
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["model"])
    buckets = [(repr(b), c) for b, c in zip(histogram.bounds, histogram.cumulative, strict=True)]
    buckets.append(("+Inf", histogram.count))
    family.add_metric([model], buckets, histogram.sum)
    return family


def render_snapshot(snapshot: MetricsSnapshot, model: str = "model") -> str:
    """The snapshot as a `/metrics` body in Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot, model))
    return generate_latest(registry).decode()
