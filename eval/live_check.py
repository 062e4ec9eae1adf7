"""Simulator against a live deployment: the same scenario, seed and closed-loop load, run through
the environment on both backends, compared on the requests that arrived after the warm-up.

Both runs send the same sessions (the scenario seed's `sessions` stream) at the scenario's own
knobs; the live one through `backend="dynamo"`, so the same records come back from both: TTFT as
Dynamo's frontend measured it, the inter-token gap from the client's completion time, the cached
tokens the workers reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from envs.disagg_env import DisaggRoutingEnv
from envs.live.backend import LiveBackend, LiveConfig
from envs.sim.knobs import override_to_action
from envs.sim.metrics import percentile
from envs.sim.records import RequestRecord

# metric -> (label, whether the acceptance bound applies)
LIVE_METRICS: dict[str, str] = {
    "ttft_mean_s": "mean TTFT",
    "ttft_p99_s": "P99 TTFT",
    "itl_mean_s": "mean ITL",
    "throughput_rps": "throughput",
    "prefix_reuse": "prefix reuse",
}
BOUNDED = {"ttft_mean_s": 0.15, "itl_mean_s": 0.15}


@dataclass(frozen=True, slots=True)
class LiveCheckSettings:
    scenario: str
    overrides: tuple[str, ...] = ()
    loads: tuple[int, ...] = (2, 4, 8)
    interval_s: float = 5.0
    num_intervals: int = 6
    warmup_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.loads or min(self.loads) < 1:
            raise ValueError(f"loads: need client counts >= 1, got {self.loads}")
        if self.num_intervals < 1 or not self.interval_s > 0:
            raise ValueError("num_intervals >= 1 and interval_s > 0")


@dataclass(frozen=True, slots=True)
class LiveCheckRow:
    concurrency: int
    sim: dict[str, float]
    live: dict[str, float]

    @property
    def errors(self) -> dict[str, float]:
        return {name: relative_error(self.live[name], self.sim[name]) for name in LIVE_METRICS}

    @property
    def passed(self) -> bool:
        errors = self.errors
        return all(abs(errors[name]) <= bound for name, bound in BOUNDED.items())


def relative_error(live: float, sim: float) -> float:
    """(live - sim) / sim; NaN without a simulated value to compare with."""
    if not math.isfinite(sim) or sim == 0 or not math.isfinite(live):
        return math.nan
    return (live - sim) / sim


def summarize_window(records: Sequence[RequestRecord], start_s: float, duration_s: float) -> dict[str, float]:
    """The compared figures over the requests that arrived in [start_s, start_s + duration_s).

    TTFT and ITL as Dynamo 1.6.1's frontend measures them: when disaggregated, the first token
    is the one the prefill worker returns (its `nvext` `ttft_ms` is exactly `prefill_wait_time_ms
    + prefill_time_ms`, measured), so the KV transfer and the decode worker's first pass fall into
    the first inter-token gap. The simulator's own `ttft_s` counts to the decode worker's first
    token, as Dynamo's offline replay does; here both runs are read the frontend's way
    (`prefill_end_s`, which is the first token when aggregated).
    """
    measured = [r for r in records if start_s <= r.arrival_s < start_s + duration_s]
    ttft = [r.prefill_end_s - r.arrival_s for r in measured]
    gaps = [
        (r.last_token_s - r.prefill_end_s) / (r.output_tokens - 1) for r in measured if r.output_tokens > 1
    ]
    prompt = sum(r.input_tokens for r in measured)
    return {
        "ttft_mean_s": float(np.mean(ttft)) if ttft else math.nan,
        "ttft_p99_s": percentile(ttft, 99),
        "itl_mean_s": float(np.mean(gaps)) if gaps else math.nan,
        "throughput_rps": len(measured) / duration_s,
        "prefix_reuse": sum(r.cached_tokens for r in measured) / prompt if prompt else math.nan,
        "num_requests": float(len(measured)),
    }


def run_once(settings: LiveCheckSettings, concurrency: int, live: LiveConfig | None) -> dict[str, float]:
    """One episode at a constant `concurrency` on the simulator (live None) or the deployment."""
    env = DisaggRoutingEnv(
        scenario=settings.scenario,
        overrides=list(settings.overrides),
        schedules=[{"kind": "constant", "low": concurrency, "high": concurrency}],
        interval_s=settings.interval_s,
        num_intervals=settings.num_intervals,
        warmup_s=settings.warmup_s,
        reward={"throughput_weight": 0.0},  # no reference runs: only the records are compared
        backend="sim" if live is None else "dynamo",
        live=live,
    )
    try:
        env.reset(seed=settings.seed)
        action = override_to_action(env.default_values, env.knobs)
        for _ in range(settings.num_intervals):
            *_, info = env.step(action)
            if info.get("ended"):
                raise RuntimeError(info["ended"])
        duration_s = settings.num_intervals * settings.interval_s
        return summarize_window(env.records, settings.warmup_s, duration_s)
    finally:
        env.close()


def run_live_check(
    settings: LiveCheckSettings, live: LiveConfig, on_done: Callable[[str], None] = lambda _: None
) -> list[LiveCheckRow]:
    LiveBackend(live).close()  # an unreachable deployment fails here, before any simulation
    rows = []
    for concurrency in settings.loads:
        sim = run_once(settings, concurrency, None)
        on_done(f"C={concurrency} simulated")
        measured = run_once(settings, concurrency, live)
        on_done(f"C={concurrency} live")
        rows.append(LiveCheckRow(concurrency, sim, measured))
    return rows
