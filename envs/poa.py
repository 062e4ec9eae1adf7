"""PoA-hat: how far a router's actual assignment is from the best assignment of the same requests.

The paper's estimator (arXiv 2606.17081, section 6.4) runs the Hungarian algorithm on a
frozen-latency cost matrix against the actual routing outcomes; its window and cost entries are
not public. This module is our reconstruction; `eval/METRICS.md` says which choices are ours.

For one routing stage, its decisions (ordered by time) are cut into windows of `window`
consecutive decisions. For a window whose first decision is at t0:

    frozen[r, w] = base_s + per_uncached_token_s * uncached_tokens(r, w) + per_inflight_s * n_w(t0)
    actual_W     = sum over r of realized_s(r)      (or frozen[r, chosen(r)] with actual="frozen")
    opt_W        = min over assignments (Hungarian; each worker takes at most ceil(k/m) requests)
                   of sum over r of frozen[r, w]
    PoA-hat      = sum_W actual_W / sum_W opt_W

`uncached_tokens(r, w)` is r's prompt minus the prefix cached on w as the record saw it;
`n_w(t0)` counts requests routed to w at this stage before t0 still waiting for their first
token; `realized_s(r)` is r's TTFT, the outcome its user saw whatever the stage (in 1P/xD
setups the decode choice comes after a prefill queue the frozen model cannot see). Frozen
latencies are
the linear (below-saturation) latency model of the paper's section 5; past the knee real latency
grows faster, which is why PoA-hat explodes there and why it is an upper bound on the true PoA.

Everything comes from the request records and three latency coefficients (which
`LatencyModel.from_timing` derives from the scenario's timing profile); nothing is re-simulated.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from envs.sim.config import ScenarioConfig
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.records import RequestRecord, RouteDecision, Stage
from envs.sim.timing import TimingModel, make_timing


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Frozen latency of a request on a worker, linear in its uncached prompt and the worker's
    in-flight requests (seconds)."""

    block_size: int
    base_s: float
    per_uncached_token_s: float
    per_inflight_s: float

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        for name in ("base_s", "per_uncached_token_s", "per_inflight_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.base_s == 0 and self.per_uncached_token_s == 0:
            raise ValueError("base_s and per_uncached_token_s cannot both be 0 (OPT would be 0)")

    @classmethod
    def from_timing(
        cls, timing: TimingModel, block_size: int, capacity_tokens: int, mean_input_tokens: float
    ) -> LatencyModel:
        """Coefficients read off a timing model: the idle cost of one prefill pass plus one
        decode step, the marginal prefill cost of a token, and one queued request's prefill work
        (its uncached prompt at the marginal rate, i.e. no batching: the linear regime)."""
        lo_tokens, hi_tokens = block_size, 32 * block_size
        per_token_ms = (timing.prefill_ms(hi_tokens) - timing.prefill_ms(lo_tokens)) / (hi_tokens - lo_tokens)
        fixed_ms = timing.prefill_ms(lo_tokens) - per_token_ms * lo_tokens
        decode_ms = timing.decode_ms(0, capacity_tokens, mean_input_tokens)
        return cls(
            block_size=block_size,
            base_s=max(0.0, fixed_ms + decode_ms) / 1000.0,
            per_uncached_token_s=max(0.0, per_token_ms) / 1000.0,
            per_inflight_s=max(0.0, per_token_ms) * mean_input_tokens / 1000.0,
        )


@dataclass(frozen=True, slots=True)
class PoaParams:
    """How PoA-hat is computed (the paper's choices are unknown; these are ours)."""

    latency: LatencyModel
    stage: Stage | None = None  # None: the stage with the most candidate workers
    window: int | None = None  # decisions per window; None: the number of candidates
    actual: Literal["realized", "frozen"] = "realized"

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.actual not in ("realized", "frozen"):
            raise ValueError(f"actual must be 'realized' or 'frozen', got {self.actual!r}")


@dataclass(frozen=True, slots=True)
class PoaEstimate:
    """PoA-hat pooled over a measurement period, and the spread of per-window ratios."""

    poa_hat: float
    num_windows: int
    num_decisions: int
    stage: str
    window_median: float
    window_p90: float


def estimate_poa(
    records: Sequence[RequestRecord],
    params: PoaParams,
    *,
    start_s: float = 0.0,
    end_s: float = math.inf,
) -> PoaEstimate:
    """PoA-hat over the decisions made in [start_s, end_s); every record counts towards the
    in-flight load, so pass all of a run's records, not just the measured ones."""
    stage = params.stage or _widest_stage(records)
    pairs = _stage_decisions(records, stage)
    inflight = _InflightIndex(pairs)
    measured = [(r, d) for r, d in pairs if start_s <= d.time_s < end_s]
    if not measured:
        return PoaEstimate(math.nan, 0, 0, str(stage), math.nan, math.nan)
    window = params.window or len(measured[0][1].candidates)
    actual_sums, opt_sums = [], []
    for first in range(0, len(measured) - window + 1, window):
        actual, opt = _window_costs(measured[first : first + window], inflight, params)
        actual_sums.append(actual)
        opt_sums.append(opt)
    if not opt_sums:
        return PoaEstimate(math.nan, 0, len(measured), str(stage), math.nan, math.nan)
    ratios = np.asarray(actual_sums) / np.asarray(opt_sums)
    return PoaEstimate(
        poa_hat=float(sum(actual_sums) / sum(opt_sums)),
        num_windows=len(opt_sums),
        num_decisions=len(opt_sums) * window,
        stage=str(stage),
        window_median=float(np.median(ratios)),
        window_p90=float(np.percentile(ratios, 90)),
    )


def frozen_matrix(
    window: Sequence[tuple[RequestRecord, RouteDecision]],
    inflight_by_worker: dict[int, int],
    latency: LatencyModel,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The window's frozen latency matrix (requests x workers) and its worker ids."""
    workers = tuple(sorted({w for _, d in window for w in d.candidates}))
    column = {w: j for j, w in enumerate(workers)}
    # Filled as Python rows, then converted once: numpy's per-element assignment is slow.
    rows = []
    for record, decision in window:
        row = [math.inf] * len(workers)
        for w, overlap in zip(decision.candidates, decision.overlap_blocks, strict=True):
            uncached = max(0, record.input_tokens - overlap * latency.block_size)
            row[column[w]] = (
                latency.base_s
                + latency.per_uncached_token_s * uncached
                + latency.per_inflight_s * inflight_by_worker.get(w, 0)
            )
        rows.append(row)
    return np.array(rows, dtype=float).reshape(len(window), len(workers)), workers


def optimal_cost(matrix: np.ndarray) -> float:
    """Least total cost when each worker (column) takes at most ceil(rows / columns) requests."""
    num_rows, num_cols = matrix.shape
    slots = np.repeat(matrix, -(-num_rows // num_cols), axis=1)
    finite = np.where(np.isfinite(slots), slots, 1e18)
    rows, cols = linear_sum_assignment(finite)
    return float(slots[rows, cols].sum())


def _window_costs(
    window: Sequence[tuple[RequestRecord, RouteDecision]], inflight: _InflightIndex, params: PoaParams
) -> tuple[float, float]:
    t0 = window[0][1].time_s
    matrix, workers = frozen_matrix(window, inflight.at(t0), params.latency)
    if params.actual == "realized":
        actual = sum(record.ttft_s for record, _ in window)
    else:
        column = {w: j for j, w in enumerate(workers)}
        actual = float(sum(matrix[i, column[d.chosen]] for i, (_, d) in enumerate(window)))
    return actual, optimal_cost(matrix)


class _InflightIndex:
    """Requests routed to each worker and not yet at their first token, at any instant."""

    def __init__(self, pairs: Sequence[tuple[RequestRecord, RouteDecision]]) -> None:
        spans: dict[int, tuple[list[float], list[float]]] = {}
        for record, decision in pairs:
            starts, ends = spans.setdefault(decision.chosen, ([], []))
            starts.append(decision.time_s)
            ends.append(record.first_token_s)
        self._spans = {w: (sorted(s), sorted(e)) for w, (s, e) in spans.items()}

    def at(self, t_s: float) -> dict[int, int]:
        # Routed strictly before t_s, first token strictly after: ends <= t_s all started before.
        # (bisect on lists: asked once per window, where numpy's call overhead dominated.)
        return {
            w: bisect.bisect_left(starts, t_s) - bisect.bisect_right(ends, t_s)
            for w, (starts, ends) in self._spans.items()
        }


def _stage_decisions(
    records: Sequence[RequestRecord], stage: Stage
) -> list[tuple[RequestRecord, RouteDecision]]:
    pairs = [(r, d) for r in records for d in r.decisions if d.stage == stage]
    pairs.sort(key=lambda pair: (pair[1].time_s, pair[0].request_id))
    return pairs


def _widest_stage(records: Sequence[RequestRecord]) -> Stage:
    widths: dict[Stage, int] = {}
    for record in records[:64]:
        for decision in record.decisions:
            widths[decision.stage] = max(widths.get(decision.stage, 0), len(decision.candidates))
    if not widths:
        return Stage.AGG
    # Ties go to the later stage (decode): in disaggregated serving that is the routed one.
    order = {Stage.AGG: 0, Stage.PREFILL: 1, Stage.DECODE: 2}
    return max(widths, key=lambda s: (widths[s], order[s]))


def poa_params_for(
    scenario: ScenarioConfig,
    profile: ProfileArrays | None,
    stage: str | None = None,
    window: int | None = None,
) -> PoaParams:
    """PoA-hat's settings for a scenario: the routed stage (given, or the widest pool, ties to
    decode) and a latency model read off the scenario's timing for that stage's engine.

    Raises:
        ValueError: an unknown stage or a window below 1.
    """
    topology = scenario.topology
    if stage is None:
        if topology.mode == "agg":
            stage = Stage.AGG
        else:
            wider_prefill = topology.num_prefill_workers > topology.num_decode_workers
            stage = Stage.PREFILL if wider_prefill else Stage.DECODE
    engine = scenario.engine_for(str(stage))
    latency = LatencyModel.from_timing(
        make_timing(scenario.timing, profile),
        engine.block_size,
        engine.capacity_tokens,
        float(scenario.workload.isl_tokens),
    )
    return PoaParams(latency=latency, stage=Stage(stage), window=window)
