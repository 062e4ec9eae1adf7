"""The environment's levers beyond the router knobs (`envs.sim.knobs.LEVERS`), applied on their
own cadence with their real cost.

`num_prefill_workers` splits the scenario's worker budget (`scaling.max_workers`) between the
prefill and decode pools: every `every` control intervals the action's value, rounded, becomes
the prefill pool's target and the rest of the budget the decode pool's. The move costs what it
costs in Dynamo: a new worker serves only after `scaling.startup_s`, a drained one finishes what
it holds first (`envs.sim.scaling`), so a policy that moves often pays for it in capacity.

`active_prefill_tokens_threshold_frac` is Dynamo's busy threshold on prefill load (`envs.sim.busy`),
set every interval as the frontend's `POST /busy_threshold` sets it, with no extra hop: a worker
whose active prefill tokens exceed the value x its `max_num_batched_tokens` is passed over, and a
request that finds every worker of its pool busy is turned away (HTTP 529). The top of the
lever's range means no shedding: the driver then sets `UNBOUNDED_FRAC`, a threshold no load
reaches, since `POST /busy_threshold` cannot unset a value once set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envs.sim.cluster import Cluster
from envs.sim.config import ScenarioConfig
from envs.sim.knobs import KnobRange

BUSY_LEVER = "active_prefill_tokens_threshold_frac"
# A busy threshold no load reaches (x max_num_batched_tokens): the lever's "off".
UNBOUNDED_FRAC = 1e6
BUSY_RANGE: tuple[float, float] = (0.5, 8.0)


def busy_threshold_value(frac: float, knobs: Sequence[KnobRange]) -> float:
    """The threshold the busy lever's value puts in force: itself, or `UNBOUNDED_FRAC` at the top
    of its range in `knobs` (no shedding)."""
    off_at = next((k.high for k in knobs if k.name == BUSY_LEVER), BUSY_RANGE[1])
    return UNBOUNDED_FRAC if frac >= off_at else frac


def prefill_target(value: float, budget: int) -> int:
    """The prefill pool's size a `num_prefill_workers` value asks for: rounded, and leaving each
    pool one worker of the budget at least (the rule the simulator and the live sidecar share)."""
    return min(max(1, round(value)), budget - 1)


def check_levers(knobs: Sequence[KnobRange], scenario: ScenarioConfig) -> None:
    """Reject a lever the scenario's deployment cannot move (the message names the field)."""
    for knob in knobs:
        if knob.name == BUSY_LEVER and scenario.router.mode in ("cache_aware", "llm_d"):
            raise ValueError(
                f"{scenario.name}: the {BUSY_LEVER} lever is Dynamo's busy threshold; router mode "
                f"{scenario.router.mode!r} has none"
            )
        if knob.name != "num_prefill_workers":
            continue
        budget = scenario.scaling.max_workers
        if scenario.topology.mode != "disagg" or budget is None:
            raise ValueError(
                f"{scenario.name}: the num_prefill_workers lever needs a disaggregated topology and "
                "scaling.max_workers (the budget it splits)"
            )
        if knob.low < 1 or knob.high > budget - 1:
            raise ValueError(
                f"knob num_prefill_workers: [{knob.low:g}, {knob.high:g}] must lie in [1, {budget - 1}] "
                f"(scaling.max_workers {budget} leaves one decode worker at least)"
            )


def lever_defaults(scenario: ScenarioConfig) -> dict[str, float]:
    """The scenario's own value of every lever: what a policy that does not set one holds (no
    busy threshold is the top of the lever's range, its "off")."""
    frac = scenario.router.active_prefill_tokens_threshold_frac
    return {
        "num_prefill_workers": float(scenario.topology.num_prefill_workers),
        BUSY_LEVER: BUSY_RANGE[1] if frac is None else min(frac, BUSY_RANGE[1]),
    }


def lever_ranges(scenario: ScenarioConfig) -> dict[str, tuple[float, float]]:
    """Each lever's widest range on the scenario (for a default action space with levers)."""
    budget = scenario.scaling.max_workers or 2
    return {"num_prefill_workers": (1.0, float(budget - 1)), BUSY_LEVER: BUSY_RANGE}


class LeverDriver:
    """Applies an episode's lever values to its cluster: the P/D split every `every` intervals,
    the busy threshold every interval."""

    def __init__(self, every: int, knobs: Sequence[KnobRange] = ()) -> None:
        if every < 1:
            raise ValueError(f"lever_every must be >= 1, got {every}")
        self.every = every
        self._knobs = tuple(knobs)

    def apply(self, cluster: Cluster, values: Mapping[str, float], step: int) -> None:
        if BUSY_LEVER in values:
            cluster.set_busy_thresholds({BUSY_LEVER: busy_threshold_value(values[BUSY_LEVER], self._knobs)})
        if "num_prefill_workers" not in values or step % self.every:
            return
        budget = cluster.scenario.scaling.max_workers
        assert budget is not None  # check_levers
        prefill = prefill_target(values["num_prefill_workers"], budget)
        if prefill != cluster.scaler.view("prefill").num_serving:
            cluster.scaler.scale_to(prefill, budget - prefill)
