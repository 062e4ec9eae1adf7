"""The one observation builder: two metrics snapshots (and the last action) -> a vector.

The environment, the live backend and the router sidecar all call `ObservationBuilder.build`
on `MetricsSnapshot`s, whichever way the snapshot was made (the simulator's collector or a
parsed `/metrics` body), so a policy sees the same features in training and in production.

Features are aggregates over workers (means, spreads), never per-worker slots, so one policy
fits any number of workers. Latencies enter as log10 seconds, rates and counts as log1p, so
that features stay O(1) from idle to deep saturation; VecNormalize does the rest.
Schema version 1; `FEATURES` lists the names in order, then the last action (one `knob_*`
entry per knob) and the history (`hist{i}_*`, oldest first).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from envs.metrics_snapshot import MetricsSnapshot

SCHEMA_VERSION = 1
FEATURES: tuple[str, ...] = (
    "ttft_p50_log10_s",
    "ttft_p99_log10_s",
    "itl_p50_log10_s",
    "itl_p99_log10_s",
    "ttft_p99_trend",  # change of ttft_p99_log10_s since the last interval
    "throughput_log1p_rps",
    "output_tokens_log1p_per_s",
    "inflight_log1p",
    "queued_log1p",
    "queued_fraction",  # queued / in flight: where the requests wait
    "kv_hit_rate",
    "decode_kv_utilisation",  # mean active decode blocks over the per-worker KV capacity
    "decode_imbalance",  # (max - min) / mean of active decode blocks
    "prefill_tokens_log1p",  # mean active prefill tokens per prefill-capable worker
    "prefill_imbalance",
    "no_completions",  # 1 when nothing finished in the interval (latencies carried over)
)
HISTORY_FEATURES: tuple[str, ...] = ("ttft_p99_log10_s", "throughput_log1p_rps")
# Latency floor for the log (1 ms): a histogram quantile can be 0 at the first bucket.
_MIN_LATENCY_S = 1e-3


@dataclass(frozen=True, slots=True)
class ObservationConfig:
    """Which knobs the last action names, and how many past intervals the history keeps."""

    knob_names: tuple[str, ...]
    history_len: int = 4

    def __post_init__(self) -> None:
        if self.history_len < 0:
            raise ValueError(f"history_len must be >= 0, got {self.history_len}")
        if not self.knob_names:
            raise ValueError("knob_names must name at least one knob")

    @property
    def feature_names(self) -> tuple[str, ...]:
        knobs = tuple(f"knob_{name}" for name in self.knob_names)
        history = tuple(f"hist{i}_{name}" for i in range(self.history_len) for name in HISTORY_FEATURES)
        return FEATURES + knobs + history

    @property
    def size(self) -> int:
        return len(self.feature_names)


@dataclass(slots=True)
class ObservationBuilder:
    """Stateful across one episode: it keeps the previous snapshot and the recent history."""

    config: ObservationConfig
    _previous: MetricsSnapshot | None = None
    _last: dict[str, float] = field(default_factory=dict)
    _history: deque = field(default_factory=deque)

    def reset(self, snapshot: MetricsSnapshot) -> None:
        """Start an episode at this snapshot (the first interval is measured from it)."""
        self._previous = snapshot
        latencies = ("ttft_p50_log10_s", "ttft_p99_log10_s", "itl_p50_log10_s", "itl_p99_log10_s")
        self._last = dict.fromkeys(latencies, math.log10(_MIN_LATENCY_S)) | {"kv_hit_rate": 0.0}
        self._history = deque(
            [dict.fromkeys(HISTORY_FEATURES, 0.0) for _ in range(self.config.history_len)],
            maxlen=self.config.history_len,
        )

    def build(self, snapshot: MetricsSnapshot, last_action: np.ndarray) -> np.ndarray:
        """The observation for the interval that ends at `snapshot`."""
        if self._previous is None:
            raise RuntimeError("call reset() before build()")
        values = interval_features(self._previous, snapshot, self._last)
        vector = [values[name] for name in FEATURES]
        vector += [float(a) for a in np.asarray(last_action, dtype=float).reshape(-1)]
        vector += [h[name] for h in self._history for name in HISTORY_FEATURES]
        if len(vector) != self.config.size:
            raise ValueError(f"last_action has the wrong length for knobs {self.config.knob_names}")
        if self.config.history_len:
            self._history.append({name: values[name] for name in HISTORY_FEATURES})
        self._last = values
        self._previous = snapshot
        return np.asarray(vector, dtype=np.float32)


def interval_features(
    before: MetricsSnapshot, after: MetricsSnapshot, last: dict[str, float]
) -> dict[str, float]:
    """Named features of the interval (before, after]; `last` supplies the latencies to carry
    over when no request finished."""
    elapsed_s = after.time_s - before.time_s
    if elapsed_s <= 0:
        raise ValueError(f"snapshots must move forward in time (got {before.time_s} -> {after.time_s})")
    ttft, itl = after.ttft.minus(before.ttft), after.itl.minus(before.itl)
    finished = after.requests_total - before.requests_total
    values = _latencies(ttft, itl, last)
    values["ttft_p99_trend"] = values["ttft_p99_log10_s"] - last["ttft_p99_log10_s"]
    values["throughput_log1p_rps"] = math.log1p(max(0.0, finished) / elapsed_s)
    tokens = max(0.0, after.output_tokens_total - before.output_tokens_total)
    values["output_tokens_log1p_per_s"] = math.log1p(tokens / elapsed_s)
    values["inflight_log1p"] = math.log1p(after.inflight_requests)
    values["queued_log1p"] = math.log1p(after.queued_requests)
    values["queued_fraction"] = after.queued_requests / max(after.inflight_requests, 1.0)
    input_tokens = after.input_tokens_total - before.input_tokens_total
    cached = after.cached_tokens_total - before.cached_tokens_total
    values["kv_hit_rate"] = cached / input_tokens if input_tokens > 0 else last["kv_hit_rate"]
    values |= _worker_features(after)
    values["no_completions"] = 0.0 if finished > 0 else 1.0
    return values


def _latencies(ttft, itl, last: dict[str, float]) -> dict[str, float]:
    pairs = {
        "ttft_p50_log10_s": (ttft, 0.50),
        "ttft_p99_log10_s": (ttft, 0.99),
        "itl_p50_log10_s": (itl, 0.50),
        "itl_p99_log10_s": (itl, 0.99),
    }
    values = {}
    for name, (histogram, q) in pairs.items():
        quantile = histogram.quantile(q)
        values[name] = last[name] if math.isnan(quantile) else math.log10(max(quantile, _MIN_LATENCY_S))
    return values


def _worker_features(snapshot: MetricsSnapshot) -> dict[str, float]:
    decode = [w.active_decode_blocks for w in snapshot.workers if w.worker_type in ("decode", "agg")]
    prefill = [w.active_prefill_tokens for w in snapshot.workers if w.worker_type in ("prefill", "agg")]
    per_worker_blocks = snapshot.total_kv_blocks / len(decode) if decode and snapshot.total_kv_blocks else 0.0
    return {
        "decode_kv_utilisation": float(np.mean(decode)) / per_worker_blocks if per_worker_blocks else 0.0,
        "decode_imbalance": _imbalance(decode),
        "prefill_tokens_log1p": math.log1p(float(np.mean(prefill))) if prefill else 0.0,
        "prefill_imbalance": _imbalance(prefill),
    }


def _imbalance(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = float(np.mean(values))
    return (max(values) - min(values)) / mean if mean > 0 else 0.0


def feature_index(config: ObservationConfig, name: str) -> int:
    """Where a named feature sits in the vector (policies read features by name)."""
    try:
        return config.feature_names.index(name)
    except ValueError:
        raise KeyError(f"no observation feature {name!r} (schema v{SCHEMA_VERSION})") from None
