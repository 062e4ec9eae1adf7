"""The reward: a weighted sum of named terms, each reported in `info["reward_terms"]`.

    poa         = -poa_weight * ln(PoA-hat of the requests that finished in the interval)
    ttft_p99    = -ttft_p99_weight * log10(TTFT P99 / ttft_ref_s)
    throughput  = -throughput_weight * max(0, (1 - throughput_tolerance) - X / X_default(C))
    itl         = -itl_weight * max(0, log10(ITL P99 / itl_slo_s))     (only when itl_weight > 0)

Why this shape: the paper's goal is a lower PoA-hat and a lower tail TTFT; logs make halving
either worth the same everywhere on the load curve, so the agent is not dominated by deep
saturation, where both explode. PoA-hat alone can be gamed in a closed loop by slowing decode
(fewer requests reach the prefill queue), which costs throughput: the paper's controller paid
13%. The throughput term is zero within `throughput_tolerance` (3%) of what Dynamo's default
router achieves at the same client count C, and then grows steeply (a 5-point shortfall beyond
the tolerance costs as much as a 2.7x PoA-hat), so the agent may only trade a few percent.

X is the decode tokens emitted in the interval per second (`Cluster.num_decode_tokens`), counted
as they are emitted, not finished requests: completions lag a rising client count by a request
lifetime and, at ~75 per 5-s interval on the multi-turn presets, vary more from interval to
interval (at a steady C = 64 on 3P/3D, a coefficient of variation of 0.09 against 0.06).
The reference needs a warm-up of several think times: with 3 s, its clients had not yet paused
between turns, and the default router itself fell 35-60% short of it on agg8 at C = 256.
`X_default(C)` is measured the same way by short simulations of the default router
(`ReferenceThroughput`).

The ITL term is an SLO hinge, off by default: none of the other terms sees decode speed, so a
policy that moves workers from decode to prefill may triple ITL P99 unpunished (the shipped
levers-multiturn policy: 24 against 8 ms). Within the SLO it costs nothing, so it only bounds
that trade; 50 ms is the Dynamo Planner's default ITL target. Off, the term is not reported at
all, so rewards and logs are exactly what they were without it.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass

from envs.sim.config import ScenarioConfig
from envs.sim.metrics import percentile
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.records import RequestRecord
from envs.sim.run import build_cluster


@dataclass(frozen=True, slots=True)
class RewardConfig:
    poa_weight: float = 1.0
    ttft_p99_weight: float = 1.0
    throughput_weight: float = 20.0
    throughput_tolerance: float = 0.03
    ttft_ref_s: float = 0.1
    itl_weight: float = 0.0
    itl_slo_s: float = 0.05

    def __post_init__(self) -> None:
        for name in ("poa_weight", "ttft_p99_weight", "throughput_weight", "itl_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"reward {name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.throughput_tolerance < 1:
            raise ValueError(
                f"reward throughput_tolerance must be in [0, 1), got {self.throughput_tolerance}"
            )
        if not self.ttft_ref_s > 0:
            raise ValueError(f"reward ttft_ref_s must be > 0, got {self.ttft_ref_s}")
        if not self.itl_slo_s > 0:
            raise ValueError(f"reward itl_slo_s must be > 0, got {self.itl_slo_s}")


def reward_terms(
    config: RewardConfig,
    poa_hat: float,
    finished: list[RequestRecord],
    decode_tok_s: float,
    reference_tok_s: float,
    itl_p99_s: float = math.nan,
) -> dict[str, float]:
    """The named terms of one interval (a term without data, e.g. no request finished, is 0)."""
    ttft_p99_s = percentile([r.ttft_s for r in finished], 99)
    terms = {
        "poa": -config.poa_weight * math.log(poa_hat) if math.isfinite(poa_hat) and poa_hat > 0 else 0.0,
        "ttft_p99": (
            -config.ttft_p99_weight * math.log10(ttft_p99_s / config.ttft_ref_s)
            if math.isfinite(ttft_p99_s)
            else 0.0
        ),
        "throughput": 0.0,
    }
    if reference_tok_s > 0:
        shortfall = (1.0 - config.throughput_tolerance) - decode_tok_s / reference_tok_s
        terms["throughput"] = -config.throughput_weight * max(0.0, shortfall)
    if config.itl_weight > 0:
        over = math.log10(itl_p99_s / config.itl_slo_s) if math.isfinite(itl_p99_s) else 0.0
        terms["itl"] = -config.itl_weight * max(0.0, over)
    return terms


# Client counts at which the default router's throughput is measured (log-spaced, like a sweep).
REFERENCE_GRID: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)


class ReferenceThroughput:
    """Decode tokens per second of the scenario's default router at each client count, measured
    lazily by a short closed-loop simulation per grid point and interpolated linearly in log C."""

    def __init__(
        self,
        scenario: ScenarioConfig,
        profile: ProfileArrays | None,
        measure_s: float = 30.0,
        warmup_s: float = 30.0,
    ) -> None:
        self._scenario = scenario
        self._profile = profile
        self._measure_s = measure_s
        self._warmup_s = warmup_s
        self._cache: dict[int, float] = {}

    def at(self, concurrency: float) -> float:
        grid = REFERENCE_GRID
        if concurrency <= grid[0]:
            return self._point(grid[0]) * concurrency / grid[0]
        i = min(bisect.bisect_left(grid, concurrency), len(grid) - 1)
        lo, hi = grid[i - 1], grid[i]
        if concurrency >= hi:
            return self._point(hi)
        fraction = math.log(concurrency / lo) / math.log(hi / lo)
        return self._point(lo) + fraction * (self._point(hi) - self._point(lo))

    def _point(self, concurrency: int) -> float:
        if concurrency not in self._cache:
            self._cache[concurrency] = self._measure(concurrency)
        return self._cache[concurrency]

    def _measure(self, concurrency: int) -> float:
        workload = dataclasses.replace(
            self._scenario.workload,
            arrival="closed_loop",
            concurrency=concurrency,
            num_requests=None,
            load_schedule=(),
        )
        duration_s = self._warmup_s + self._measure_s
        scenario = dataclasses.replace(self._scenario, workload=workload, duration_s=duration_s)
        cluster = build_cluster(scenario, profile=self._profile)
        cluster.env.run(until=self._warmup_s)
        warm_tokens = cluster.num_decode_tokens
        cluster.env.run(until=duration_s)
        return (cluster.num_decode_tokens - warm_tokens) / self._measure_s
