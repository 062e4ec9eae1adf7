"""Run a scenario from its file: load what it names (trace, profile) relative to it, simulate.

Shared by `poa-gym simulate` and the sweep's worker processes, so it imports no CLI code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from envs.sim.config import ScenarioConfig
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.run import SimResult, simulate
from envs.sim.workload import Session


@dataclass(frozen=True, slots=True)
class ScenarioInputs:
    """The files a scenario names, loaded: trace sessions (trace arrivals) and a timing profile."""

    trace_sessions: Iterable[Session] | None
    profile: ProfileArrays | None


def load_inputs(scenario: ScenarioConfig, path: Path) -> ScenarioInputs:
    """Load the trace and the timing profile a scenario names, relative to its file."""
    from envs.profiles import load_profile
    from envs.traces import load_mooncake

    base = path.parent
    sessions = None
    if scenario.workload.arrival == "trace":
        workload = scenario.workload
        trace = base / workload.trace_path if workload.trace_path else None
        sessions = load_mooncake(trace, workload.trace_block_tokens, workload.trace_time_scale)
    profile = load_profile(base / scenario.timing.profile_path) if scenario.timing.profile_path else None
    return ScenarioInputs(sessions, profile)


def run_scenario(
    scenario: ScenarioConfig, path: Path, progress: Callable[[float, int], None] | None = None
) -> SimResult:
    """Load what the scenario names (trace, profile) relative to its file, then simulate."""
    inputs = load_inputs(scenario, path)
    return simulate(scenario, trace_sessions=inputs.trace_sessions, profile=inputs.profile, progress=progress)
