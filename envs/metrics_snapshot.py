"""What a live Dynamo 1.6.1 frontend exposes on `/metrics`, as one typed snapshot.

The simulator fills a `MetricsSnapshot` from its own state (`envs.sim_metrics`); the live
backend and the router sidecar parse the frontend's Prometheus text into the same type
(`envs.prometheus`). The observation builder (`envs.observation`) sees only snapshots, so a
policy trained on the simulator reads a live deployment through exactly the same code.

Counters and histograms are cumulative since the process started, as in Prometheus; the
builder differences two snapshots to get one control interval's rates and quantiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Dynamo 1.6.1 frontend metric names (lib/runtime/src/metrics/prometheus_names.rs).
TTFT = "dynamo_frontend_time_to_first_token_seconds"
ITL = "dynamo_frontend_inter_token_latency_seconds"
REQUESTS_TOTAL = "dynamo_frontend_requests_total"
OUTPUT_TOKENS_TOTAL = "dynamo_frontend_output_tokens_total"
INPUT_TOKENS = "dynamo_frontend_input_sequence_tokens"
CACHED_TOKENS = "dynamo_frontend_cached_tokens"
INFLIGHT = "dynamo_frontend_inflight_requests"
QUEUED = "dynamo_frontend_queued_requests"
WORKER_DECODE_BLOCKS = "dynamo_frontend_worker_active_decode_blocks"
WORKER_PREFILL_TOKENS = "dynamo_frontend_worker_active_prefill_tokens"
TOTAL_KV_BLOCKS = "dynamo_frontend_model_total_kv_blocks"

# Dynamo 1.6.1's own bucket bounds (seconds), read off a live frontend's /metrics
# (tests/data/dynamo161_frontend_metrics.txt). The simulator uses them too, so a policy sees the
# same quantised quantiles in training as from a live deployment.
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.0, 0.0022, 0.0047, 0.01, 0.022, 0.047, 0.1, 0.22, 0.47,
    1.0, 2.2, 4.7, 10.0, 22.0, 48.0, 100.0, 220.0, 480.0,
)  # fmt: skip
ITL_BUCKETS_S: tuple[float, ...] = (
    0.0, 0.0018, 0.0033, 0.0059, 0.011, 0.02, 0.035, 0.064, 0.12, 0.21,
    0.38, 0.69, 1.2, 2.3, 4.1, 7.4, 13.0, 24.0, 44.0, 80.0,
)  # fmt: skip
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(21))


@dataclass(frozen=True, slots=True)
class Histogram:
    """A Prometheus histogram: `cumulative[i]` observations <= `bounds_s[i]`; the last bucket,
    `+Inf`, is `count`."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float
    count: float

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.cumulative):
            raise ValueError("a histogram needs one cumulative count per bucket bound")
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError("histogram bucket bounds must increase")

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0.0,) * len(bounds), 0.0, 0.0)

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since `earlier` (same buckets)."""
        if earlier.bounds != self.bounds:
            raise ValueError("cannot difference histograms with different buckets")
        cumulative = tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True))
        return Histogram(self.bounds, cumulative, self.sum - earlier.sum, self.count - earlier.count)

    def scaled(self, factor: float) -> Histogram:
        """The same observations in units `factor` times smaller (wall seconds of a mocker run
        `factor` times faster than its hardware, as scenario seconds)."""
        if factor == 1.0:
            return self
        return Histogram(
            tuple(b * factor for b in self.bounds), self.cumulative, self.sum * factor, self.count
        )

    def quantile(self, q: float) -> float:
        """Prometheus `histogram_quantile`: linear interpolation inside the bucket holding rank
        q x count (the first bucket from 0). NaN without observations; past the last finite
        bound, the last finite bound."""
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank:
                if cumulative == below:
                    return bound
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return self.bounds[-1]


@dataclass(frozen=True, slots=True)
class WorkerGauge:
    """The router's view of one worker (Dynamo's per-worker gauges)."""

    worker_id: int
    worker_type: str  # "prefill", "decode" or "agg" (Dynamo leaves the label empty there)
    active_decode_blocks: float
    active_prefill_tokens: float


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """One scrape of the frontend's `/metrics` at `time_s` (any clock, seconds)."""

    time_s: float
    ttft: Histogram
    itl: Histogram
    requests_total: float
    output_tokens_total: float
    input_tokens_total: float
    cached_tokens_total: float
    inflight_requests: float
    queued_requests: float
    total_kv_blocks: float
    workers: tuple[WorkerGauge, ...]

    @classmethod
    def empty(cls, time_s: float = 0.0, total_kv_blocks: float = 0.0) -> MetricsSnapshot:
        return cls(
            time_s,
            Histogram.empty(TTFT_BUCKETS_S),
            Histogram.empty(ITL_BUCKETS_S),
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, total_kv_blocks, (),
        )  # fmt: skip
