"""Metrics as pure functions of request records (and, for ITL, the engines' pass statistics).

Definitions follow Dynamo's replay report so the two can be compared number for number:
- TTFT = first token - arrival; E2E = last token - arrival.
- ITL is pooled over every gap between consecutive output tokens of every request (token-weighted);
  TPOT is the per-request mean gap (last - first) / (n - 1), averaged over requests.
- Throughput is completed requests (or output tokens) over the time from the first arrival to the
  last completion.
- Prefix reuse ratio = tokens served from the prefix cache / prompt tokens.
- Percentiles are nearest-rank on the sorted values: sorted[round((n - 1) p / 100)].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs.sim.records import RequestRecord
from envs.sim.sequence import EngineStats


def percentile(values: Sequence[float] | np.ndarray, pct: float) -> float:
    """Nearest-rank percentile (Dynamo's report); NaN for no values."""
    if len(values) == 0:
        return float("nan")
    ordered = np.sort(np.asarray(values, dtype=float))
    return float(ordered[round((len(ordered) - 1) * pct / 100.0)])


def weighted_percentile(values: np.ndarray, weights: np.ndarray, pct: float) -> float:
    """Nearest-rank percentile of values repeated `weights` times."""
    total = int(weights.sum())
    if total == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    rank = round((total - 1) * pct / 100.0)
    return float(values[order][np.searchsorted(cumulative, rank, side="right")])


def itl_samples(stats: Sequence[EngineStats]) -> tuple[np.ndarray, np.ndarray]:
    """All inter-token gaps as (gap_s, count) pairs, pooled over engines."""
    gaps = [np.asarray(s.pass_gaps_s, dtype=float) for s in stats]
    counts = [np.asarray(s.pass_gap_counts, dtype=float) for s in stats]
    gaps.append(np.asarray([g for s in stats for g in s.other_gaps_s], dtype=float))
    counts.append(np.ones(len(gaps[-1])))
    return np.concatenate(gaps), np.concatenate(counts)


@dataclass(frozen=True, slots=True)
class Summary:
    """The headline numbers of one run (seconds, requests/s, tokens/s)."""

    num_requests: int
    duration_s: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    itl_mean_s: float
    itl_p50_s: float
    itl_p99_s: float
    tpot_mean_s: float
    e2e_mean_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    throughput_rps: float
    output_tok_s: float
    prefix_reuse_ratio: float
    num_preemptions: int


def summarize(records: Sequence[RequestRecord], stats: Sequence[EngineStats] = ()) -> Summary:
    """Summary statistics of a run. Without engine stats, ITL percentiles fall back to each
    request's mean gap."""
    if not records:
        nan = float("nan")
        return Summary(0, 0.0, *([nan] * 14), 0)
    ttft = np.array([r.ttft_s for r in records])
    e2e = np.array([r.e2e_s for r in records])
    multi = [r for r in records if r.output_tokens > 1]
    tpot = np.array([r.mean_itl_s for r in multi]) if multi else np.array([np.nan])
    gap_sum = sum(r.last_token_s - r.first_token_s for r in multi)
    num_gaps = sum(r.output_tokens - 1 for r in multi)
    if stats:
        gaps, counts = itl_samples(stats)
    else:
        gaps, counts = tpot, np.array([r.output_tokens - 1 for r in multi], dtype=float)
    duration = max(r.last_token_s for r in records) - min(r.arrival_s for r in records)
    return Summary(
        num_requests=len(records),
        duration_s=duration,
        ttft_mean_s=float(ttft.mean()),
        ttft_p50_s=percentile(ttft, 50),
        ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99),
        itl_mean_s=gap_sum / num_gaps if num_gaps else float("nan"),
        itl_p50_s=weighted_percentile(gaps, counts, 50),
        itl_p99_s=weighted_percentile(gaps, counts, 99),
        tpot_mean_s=float(np.nanmean(tpot)),
        e2e_mean_s=float(e2e.mean()),
        e2e_p50_s=percentile(e2e, 50),
        e2e_p99_s=percentile(e2e, 99),
        throughput_rps=len(records) / duration if duration > 0 else float("nan"),
        output_tok_s=sum(r.output_tokens for r in records) / duration if duration > 0 else float("nan"),
        prefix_reuse_ratio=prefix_reuse_ratio(records),
        num_preemptions=sum(r.num_preemptions for r in records),
    )


def prefix_reuse_ratio(records: Sequence[RequestRecord]) -> float:
    """Prompt tokens served from the prefix cache over all prompt tokens."""
    total = sum(r.input_tokens for r in records)
    return sum(r.cached_tokens for r in records) / total if total else float("nan")


def goodput_rps(
    records: Sequence[RequestRecord],
    ttft_slo_s: float | None = None,
    itl_slo_s: float | None = None,
    e2e_slo_s: float | None = None,
) -> float:
    """Completed requests per second that met every SLO given (Dynamo's goodput rule: the ITL
    bound applies to the request's mean gap, and only to multi-token outputs)."""
    if not records:
        return float("nan")
    good = 0
    for r in records:
        itl = r.mean_itl_s
        if ttft_slo_s is not None and r.ttft_s > ttft_slo_s:
            continue
        if e2e_slo_s is not None and r.e2e_s > e2e_slo_s:
            continue
        if itl_slo_s is not None and itl is not None and itl > itl_slo_s:
            continue
        good += 1
    duration = max(r.last_token_s for r in records) - min(r.arrival_s for r in records)
    return good / duration if duration > 0 else float("nan")
