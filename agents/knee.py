"""The paper's knee-detection controller (Section 6), rebuilt from what the paper states.

Every control interval (the paper polls Prometheus every 5 s) it reads the interval's TTFT P99,
smooths it with an EWMA, compares the smoothed value with the below-saturation baseline, and
classifies the regime: below saturation, transition, saturated. A regime changes only after
`dwell_polls` consecutive polls point to the same new regime, and a regime is left downwards
only when the ratio falls below `exit_fraction` of the ratio that entered it (hysteresis), so
the knobs do not flap on noise. Each regime maps to one row of knob values (the paper's
Table 2).

What is the paper's and what is ours:
- Paper: the signal (EWMA of TTFT P99), the three regimes, the 5-s polling, per-request
  actuation, and Table 2's saturated row, temperature 0.8 with weight 0.1 (marked conjectural
  there: it never fired in a reported run).
- Reconstructed (the paper does not publish them): the EWMA factor 0.3, the thresholds as ratios
  to a baseline (1.5x enters transition, 3x enters saturation), the baseline as the lowest
  smoothed value seen below saturation, the dwell of 2 polls, the exit at 0.8 of the entry ratio,
  and Table 2's first two rows (below: Dynamo's defaults, weight 1 and temperature 0, i.e. cache
  affinity; transition: weight 0.5 and temperature 0.5, halfway to the saturated row).
- Under Dynamo 1.6.1 the v0.9 overlap weight is `prefill_load_scale` (same place in the cost);
  `overlap_score_credit` stays at the scenario's value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from agents.base import PolicyContext, as_batch, episode_starts
from envs.sim.knobs import V09_TO_V16_NAMES

REGIMES: tuple[str, ...] = ("below", "transition", "saturated")

_TABLE2_V09: dict[str, dict[str, float]] = {
    "below": {"overlap_score_weight": 1.0, "router_temperature": 0.0},  # reconstructed
    "transition": {"overlap_score_weight": 0.5, "router_temperature": 0.5},  # reconstructed
    "saturated": {"overlap_score_weight": 0.1, "router_temperature": 0.8},  # paper, Table 2
}


def table2(knob_names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Table 2 in the names of the action space's knobs (v0.9 or 1.6.1); knobs absent from the
    action space are dropped, knobs absent from the table keep the scenario's values."""
    table: dict[str, dict[str, float]] = {}
    for regime, row in _TABLE2_V09.items():
        renamed = {
            name if name in knob_names else V09_TO_V16_NAMES.get(name, name): v for name, v in row.items()
        }
        table[regime] = {name: value for name, value in renamed.items() if name in knob_names}
    return table


@dataclass(frozen=True, slots=True)
class KneeConfig:
    """Detection settings (all reconstructions, see the module docstring); validated here."""

    ewma_alpha: float = 0.3
    transition_ratio: float = 1.5
    saturated_ratio: float = 3.0
    exit_fraction: float = 0.8
    dwell_polls: int = 2
    baseline_s: float | None = None  # a known below-saturation TTFT P99; None: learn it online
    table: Mapping[str, Mapping[str, float]] | None = None  # None: Table 2 (`table2`)

    def __post_init__(self) -> None:
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError(f"knee ewma_alpha must be in (0, 1], got {self.ewma_alpha}")
        if not 1 < self.transition_ratio < self.saturated_ratio:
            raise ValueError(
                "knee thresholds need 1 < transition_ratio < saturated_ratio, got "
                f"{self.transition_ratio} and {self.saturated_ratio}"
            )
        if not 0 < self.exit_fraction <= 1:
            raise ValueError(f"knee exit_fraction must be in (0, 1], got {self.exit_fraction}")
        if self.dwell_polls < 1:
            raise ValueError(f"knee dwell_polls must be >= 1, got {self.dwell_polls}")
        if self.baseline_s is not None and not self.baseline_s > 0:
            raise ValueError(f"knee baseline_s must be > 0, got {self.baseline_s}")
        if self.table is not None and set(self.table) != set(REGIMES):
            raise ValueError(f"knee table needs exactly the rows {list(REGIMES)}, got {sorted(self.table)}")

    @property
    def entry_ratios(self) -> tuple[float, ...]:
        return (0.0, self.transition_ratio, self.saturated_ratio)


@dataclass(slots=True)
class KneeState:
    """One environment's detector state."""

    ewma_s: float = math.nan
    baseline_s: float = math.nan
    regime: int = 0
    pending: int = 0
    pending_polls: int = 0

    def poll(self, ttft_p99_s: float, config: KneeConfig) -> int:
        """Take one poll; returns the regime (index into REGIMES) in force for the next interval."""
        alpha = config.ewma_alpha
        previous_s = ttft_p99_s if math.isnan(self.ewma_s) else self.ewma_s
        self.ewma_s = alpha * ttft_p99_s + (1 - alpha) * previous_s
        if config.baseline_s is not None:
            self.baseline_s = config.baseline_s
        elif self.regime == 0:
            first = math.isnan(self.baseline_s)
            self.baseline_s = self.ewma_s if first else min(self.baseline_s, self.ewma_s)
        candidate = self._indicated(self.ewma_s / self.baseline_s, config)
        if candidate == self.regime:
            self.pending_polls = 0
        elif candidate == self.pending and self.pending_polls:
            self.pending_polls += 1
        else:
            self.pending, self.pending_polls = candidate, 1
        if self.pending_polls >= config.dwell_polls:
            self.regime, self.pending_polls = self.pending, 0
        return self.regime

    def _indicated(self, ratio: float, config: KneeConfig) -> int:
        """The regime this ratio points to from the current one: up as soon as an entry ratio is
        reached, down only below `exit_fraction` of the current regime's entry ratio."""
        entries = config.entry_ratios
        up = max(i for i, entry in enumerate(entries) if ratio >= entry)
        if up >= self.regime:
            return up
        exits = [entry * config.exit_fraction for entry in entries]
        return max(i for i, threshold in enumerate(exits) if ratio >= threshold)


@dataclass(slots=True)
class KneeController:
    """The controller behind SB3's `predict`: one `KneeState` per environment of the batch."""

    context: PolicyContext
    config: KneeConfig = field(default_factory=KneeConfig)
    name: str = "knee"
    states: list[KneeState] = field(default_factory=list)
    _table: dict[str, Mapping[str, float]] = field(init=False)
    _actions: list[np.ndarray] = field(init=False)
    _ttft_index: int = field(init=False)

    def __post_init__(self) -> None:
        self._table = dict(self.config.table or table2(self.context.knob_names))
        self._actions = [self.context.action_for(self._table[regime]) for regime in REGIMES]
        self._ttft_index = self.context.index("ttft_p99_log10_s")

    def regime(self, env_index: int = 0) -> str:
        """The regime whose knobs the last action set."""
        return REGIMES[self.states[env_index].regime] if self.states else REGIMES[0]

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        batch, single = as_batch(observation, len(self.context.feature_names))
        starts = episode_starts(episode_start, batch.shape[0])
        if len(self.states) != batch.shape[0]:
            self.states = [KneeState() for _ in range(batch.shape[0])]
        actions = []
        for i, row in enumerate(batch):
            if starts[i]:
                self.states[i] = KneeState()
            regime = self.states[i].poll(10.0 ** float(row[self._ttft_index]), self.config)
            actions.append(self._actions[regime])
        stacked = np.stack(actions).astype(np.float32)
        return (stacked[0] if single else stacked), state
