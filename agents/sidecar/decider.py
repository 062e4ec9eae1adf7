"""One control interval's decision, and the fail-safe state machine around the policy. Pure: the
service feeds it snapshots and failures, it answers with the knobs to put in force.

Faults, each with its own recovery:

* `metrics`: no fresh snapshot for `stale_intervals` intervals in a row (unreachable, or counters
  frozen while requests are in flight). Recovers on the next fresh snapshot; the policy acts again
  one interval later, once the builder has an interval to measure.
* `policy`: the policy raised, or the observation or its action was not finite. Retried every
  interval; recovers when an interval decides cleanly.
* `reload`: the policy's files were replaced by ones that do not load. Recovers when they load.
* `operator`: an operator asked for the safe setting (`PUT /mode`). Recovers when asked.

While any fault is active the knobs are the safe setting. Before `stale_intervals` missed reads the
knobs in force are held: one lost scrape is not a reason to change routing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from agents.sidecar.policies import LoadedPolicy
from envs.metrics_snapshot import MetricsSnapshot
from envs.observation import ObservationBuilder

FAULTS = ("metrics", "policy", "reload", "operator")


@dataclass(frozen=True, slots=True)
class DeciderConfig:
    """The safe setting and how many missed reads make the metrics a fault; validated."""

    safe_knobs: Mapping[str, float]
    stale_intervals: int = 3

    def __post_init__(self) -> None:
        if self.stale_intervals < 1:
            raise ValueError(f"stale_intervals: must be >= 1, got {self.stale_intervals}")
        bad = {k: v for k, v in self.safe_knobs.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"safe_knobs: every value must be finite and >= 0, got {bad}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The knobs to put in force for the next interval and where they came from."""

    knobs: dict[str, float]
    source: str  # "policy", "safe" (a fault is active) or "hold" (no new decision this interval)
    faults: tuple[str, ...]  # active faults
    started: tuple[str, ...]  # faults that became active at this interval (log them once)
    ended: tuple[str, ...]  # faults that cleared at this interval
    decision_s: float | None = None  # observation + inference time, when the policy ran
    detail: str = ""  # the latest fault's message


@dataclass(slots=True)
class Decider:
    policy: LoadedPolicy
    config: DeciderConfig
    knobs: dict[str, float] = field(init=False)
    _builder: ObservationBuilder = field(init=False)
    _primed: bool = False
    _episode_start: bool = True
    _previous: MetricsSnapshot | None = None
    _missed: int = 0
    _faults: dict[str, str] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)  # the faults of the last decision

    def __post_init__(self) -> None:
        self.knobs = self._safe()
        self._builder = ObservationBuilder(self.policy.observation)

    @property
    def faults(self) -> dict[str, str]:
        return dict(self._faults)

    def observe(self, snapshot: MetricsSnapshot) -> Decision:
        """A snapshot was read: decide, unless it is stale or the builder needs a first one."""
        if self._is_stale(snapshot):
            return self.read_failed("counters frozen while requests are in flight")
        self._previous, self._missed = snapshot, 0
        self._faults.pop("metrics", None)
        if not self._primed:
            self._builder.reset(snapshot)
            self._primed, self._episode_start = True, True
            return self._decide_without_policy()
        return self._run_policy(snapshot)

    def read_failed(self, reason: str) -> Decision:
        """No fresh snapshot this interval."""
        self._missed += 1
        if self._missed >= self.config.stale_intervals and "metrics" not in self._faults:
            self._faults["metrics"] = f"no fresh metrics for {self._missed} intervals: {reason}"
            self._primed = False  # the interval across the gap is not one the policy was trained on
        return self._decide_without_policy(detail=self._faults.get("metrics", reason))

    def set_fault(self, kind: str, message: str | None) -> None:
        """Raise (`message`) or clear (None) a `reload` or `operator` fault."""
        if kind not in ("reload", "operator"):
            raise ValueError(f"set_fault: kind must be reload or operator, got {kind!r}")
        if message is None:
            self._faults.pop(kind, None)
        else:
            self._faults[kind] = message

    def adopt_knobs(self, knobs: Mapping[str, float]) -> None:
        """The knobs in force before the first decision (the router's own), where it has them."""
        self.knobs = {name: float(knobs.get(name, value)) for name, value in self.knobs.items()}

    def replace_policy(self, policy: LoadedPolicy) -> None:
        """A new policy with the same observation layout (the builder's history carries over)."""
        if policy.observation != self.policy.observation:
            raise ValueError(f"{policy.name}: reads a different observation than {self.policy.name}")
        self.policy, self._episode_start = policy, True

    # -- internals ------------------------------------------------------------------------------

    def _run_policy(self, snapshot: MetricsSnapshot) -> Decision:
        start_s = time.perf_counter()
        last_action = self.policy.action_for(self.knobs)
        observation = self._builder.build(snapshot, last_action)
        if "reload" in self._faults or "operator" in self._faults:
            return self._decide_without_policy()
        try:
            if not np.all(np.isfinite(observation)):
                raise ValueError("the observation is not finite")
            action, _ = self.policy.policy.predict(
                observation, episode_start=np.array([self._episode_start]), deterministic=True
            )
            action = np.asarray(action, dtype=float).reshape(-1)
            if not np.all(np.isfinite(action)):
                raise ValueError(f"the policy's action is not finite: {action.tolist()}")
            knobs = self.policy.knobs_for(action)
        except Exception as error:  # any policy failure must fall back, never stop the loop
            self._faults["policy"] = f"{type(error).__name__}: {error}"
            return self._decide_without_policy()
        decision_s = time.perf_counter() - start_s
        self._faults.pop("policy", None)
        self._episode_start = False
        self.knobs = knobs
        return self._decision("policy", decision_s)

    def _decide_without_policy(self, detail: str = "") -> Decision:
        if self._faults:
            self.knobs = self._safe()
            return self._decision("safe", detail=detail)
        return self._decision("hold", detail=detail)

    def _decision(self, source: str, decision_s: float | None = None, detail: str = "") -> Decision:
        """The decision, with the faults that started or ended since the last one (a fault raised
        between intervals, as `set_fault` does, starts at the next decision)."""
        now, before = set(self._faults), self._reported
        self._reported = now
        latest = next(reversed(self._faults.values()), "") if self._faults else ""
        return Decision(
            dict(self.knobs),
            source,
            tuple(sorted(now)),
            tuple(sorted(now - before)),
            tuple(sorted(before - now)),
            decision_s,
            detail or latest,
        )

    def _is_stale(self, snapshot: MetricsSnapshot) -> bool:
        previous = self._previous
        if previous is None:
            return False
        if snapshot.time_s <= previous.time_s:
            return True
        frozen = (
            snapshot.requests_total == previous.requests_total
            and snapshot.output_tokens_total == previous.output_tokens_total
        )
        return frozen and snapshot.inflight_requests > 0

    def _safe(self) -> dict[str, float]:
        names = self.policy.context.knob_names
        return {name: float(self.config.safe_knobs[name]) for name in names}
