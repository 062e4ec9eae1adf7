"""Scenario files: find a preset or a path, parse YAML, apply overrides, validate; load the files
a scenario names (trace, timing profile) relative to it, and run it.

Every problem becomes a `ScenarioError` whose message names the file, the field and the rule,
so the CLI can print it without a traceback. The field reference is `envs/scenarios/README.md`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from envs.errors import ScenarioError
from envs.profiles import load_profile
from envs.sim.config import ScenarioConfig
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.run import SimResult, simulate
from envs.sim.workload import Session
from envs.traces import load_mooncake

PRESET_DIR = Path(__file__).parent / "scenarios"
_ADAPTER = TypeAdapter(ScenarioConfig)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A preset name (`paper-70b-1p5d`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ScenarioError(f"{name_or_path}: no such scenario file")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ScenarioError(
            f"unknown scenario '{name_or_path}': not a file, and not a preset ({', '.join(preset_names())})"
        )
    return preset


def load_scenario(
    name_or_path: str, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[ScenarioConfig, Path]:
    """Load, override (`key.sub=value`, values parsed as YAML) and validate a scenario."""
    path = resolve(name_or_path)
    data = _read_yaml(path)
    for item in overrides:
        _apply_override(data, item, path)
    _inline_policy_file(data, path)
    scenario = validate(data, str(path))
    return scenario, path


def validate(data: Any, source: str) -> ScenarioConfig:
    """Validate a scenario given as plain data (from YAML, or a config dict)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario must be a mapping of fields, got {type(data).__name__}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as error:
        raise ScenarioError(_describe(error, source)) from None


@dataclass(frozen=True, slots=True)
class ScenarioInputs:
    """The files a scenario names, loaded: trace sessions (trace arrivals) and a timing profile."""

    trace_sessions: Iterable[Session] | None
    profile: ProfileArrays | None


def load_inputs(scenario: ScenarioConfig, path: Path) -> ScenarioInputs:
    """Load the trace and the timing profile a scenario names, relative to its file."""
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
    try:
        return simulate(
            scenario, trace_sessions=inputs.trace_sessions, profile=inputs.profile, progress=progress
        )
    except ScenarioError as error:  # the simulator cannot name the file it came from
        raise ScenarioError(f"{path}: {error}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError(f"{path}:{where} not valid YAML ({getattr(error, 'problem', error)})") from None
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read ({error.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping of fields, got {type(data).__name__}")
    return data


def _inline_policy_file(data: dict[str, Any], path: Path) -> None:
    """`router.policy_config` given as a file (Dynamo's `--router-policy-config` YAML, relative
    to the scenario) is read here, so the simulator only ever sees its mapping."""
    router = data.get("router")
    if not isinstance(router, dict) or not isinstance(router.get("policy_config"), str):
        return
    policy_path = path.parent / router["policy_config"]
    try:
        policy = yaml.safe_load(policy_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        where = f"{path}: field 'router.policy_config'"
        raise ScenarioError(f"{where}: cannot read {policy_path} ({error})") from None
    if not isinstance(policy, dict):
        raise ScenarioError(f"{policy_path}: a router policy config must be a YAML mapping")
    router["policy_config"] = policy


def _apply_override(data: dict[str, Any], item: str, path: Path) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ScenarioError(f"--set {item!r}: expected key=value, e.g. router.overlap_score_credit=0.5")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ScenarioError(f"--set {item!r}: field '{part}' of {path} is not a section")
        node = child
    node[parts[-1]] = value


_RULES = {
    "unexpected_keyword_argument": "unknown field",
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
    "missing_argument": "required field is missing",
}


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid scenario"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        rule = _RULES.get(item["type"], item["msg"])
        rule = rule.removeprefix("Value error, ")
        shown = item.get("input")
        given = "" if item["type"] in _RULES or isinstance(shown, dict) else f" (got {shown!r})"
        lines.append(f"  field '{field}': {rule}{given}")
    return "\n".join(lines)
