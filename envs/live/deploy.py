"""Start, inspect and stop a local Dynamo deployment of a scenario (`poa-gym dynamo up|status|down`).

Everything a deployment writes lives in its workdir: the model folder, the profile NPZ, the
discovery store, one log per process, the control token (mode 0600) and `deployment.json`, which
records each process's PID and command line. `down` stops exactly those processes (each leads its
own process group) and nothing else: a PID whose command line no longer matches is left alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from envs.errors import UserError
from envs.live.knob_router import TOKEN_ENV
from envs.live.plan import LivePlan, PlanInputs, plan_deployment
from envs.live.ports import free_ports
from envs.live.procs import alive as _alive
from envs.live.procs import spawn, stop, strip_ansi, tail
from envs.live.tiny_model import write_tiny_model
from envs.sim.config import ScenarioConfig

RECORD_FILE = "deployment.json"
TOKEN_FILE = "control.token"
DISCOVERY_DIR = "discovery"
POLICY_CONFIG_FILE = "router-policy.yaml"  # the frontend's --router-policy-config
# What a mocker logs when its engine cannot start; the process lives on and fails every request.
ENGINE_FAILURE_MARK = "Failed to start mocker engine"
PORT_TAKEN_MARK = "Address already in use"
# Logged at INFO by `dynamo_llm::mocker` once a prefill engine listens on its bootstrap port.
BOOTSTRAP_MARK = "Bootstrap server started for prefill worker"
START_ATTEMPTS = 3
PROBE_TIMEOUT_S = 10.0


class DeploymentError(UserError, RuntimeError):
    """A deployment that cannot start or be found; the message says what to do."""


class PortTakenError(DeploymentError):
    """A port checked free was bound by another process before its owner started."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """What `up` started, as recorded in the workdir."""

    workdir: str
    model_name: str
    frontend_url: str
    control_url: str
    processes: list[dict[str, Any]]  # name, pid, argv, log (and a moved worker's pool state)
    speedup: float = 1.0  # the mockers' speed-up over the hardware they emulate
    scenario: str | None = None
    layout: str = "knob-router"  # "dynamo": no knob router (control_url answers nothing)
    max_workers: int | None = None  # the scenario's scaling.max_workers: the P/D lever's budget
    startup_s: float = 0.0  # the scenario's scaling.startup_s: a moved worker's start-up (scenario s)

    @classmethod
    def load(cls, workdir: Path) -> Deployment:
        path = workdir / RECORD_FILE
        if not path.is_file():
            raise DeploymentError(f"{path}: no deployment recorded here (start one with `poa-gym dynamo up`)")
        return cls(**json.loads(path.read_text()))

    def token(self) -> str:
        return (Path(self.workdir) / TOKEN_FILE).read_text().strip()


def dynamo_installed() -> bool:
    import importlib.util

    try:
        return all(
            importlib.util.find_spec(name) is not None for name in ("dynamo.mocker", "dynamo.frontend")
        )
    except ModuleNotFoundError:
        return False


@dataclass(frozen=True, slots=True)
class StartOptions:
    """How to start a deployment beyond its scenario (`up`'s keyword arguments)."""

    speedup: float = 1.0
    http_port: int = 0
    model_name: str = "poa-gym-mock"
    layout: str = "knob-router"  # envs.live.plan.LAYOUTS
    split_workers: bool = False


def up(
    scenario: ScenarioConfig,
    workdir: Path,
    *,
    timeout_s: float = 90.0,
    log: Callable[[str], None] = lambda _: None,
    **options: Any,
) -> Deployment:
    """Start the deployment and wait until it serves requests; stop it all on failure.

    `options` are `StartOptions`' fields: `speedup`, `http_port`, `model_name`, `layout`
    ("dynamo" for plain Dynamo without the knob router), `split_workers`.
    """
    start = StartOptions(**options)
    if not dynamo_installed():
        raise DeploymentError("NVIDIA Dynamo is not installed in this environment: run `make dynamo`")
    workdir = workdir.resolve()
    if (workdir / RECORD_FILE).is_file() and any(_alive(p) for p in Deployment.load(workdir).processes):
        raise DeploymentError(
            f"{workdir}: a deployment is already running there (`poa-gym dynamo down` first)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _start_once(scenario, workdir, start, timeout_s, log)
        except PortTakenError as error:
            if attempt == START_ATTEMPTS:
                raise DeploymentError(f"{error} (on each of {START_ATTEMPTS} attempts)") from None
            log(f"{error}; starting again on other ports")
    raise AssertionError("unreachable")


def _start_once(
    scenario: ScenarioConfig,
    workdir: Path,
    start: StartOptions,
    timeout_s: float,
    log: Callable[[str], None],
) -> Deployment:
    # A stopped deployment can leave its instances in the store, where the frontend would route
    # to them (503 "no backend worker available"); nothing runs here now (checked by `up`).
    shutil.rmtree(workdir / DISCOVERY_DIR, ignore_errors=True)
    plan = plan_deployment(_plan_inputs(scenario, workdir, start))
    write_plan_files(plan, workdir)
    token = _write_token(workdir)
    deployment = _start(plan, workdir, token, log, start, scenario)
    num_bootstrap = knob_tier_size(scenario) if scenario.topology.mode == "disagg" else 0
    num_workers = knob_tier_size(scenario) if plan.knob_router else None
    try:
        _wait_ready(deployment, num_workers, num_bootstrap, timeout_s)
    except DeploymentError:
        down(workdir)
        raise
    return deployment


def write_plan_files(plan: LivePlan, workdir: Path) -> None:
    """The files the plan's processes read: the knob router's config, the frontend's policy YAML."""
    if plan.knob_router:
        (workdir / "knob_router.json").write_text(json.dumps(plan.knob_router, indent=1) + "\n")
    if plan.policy_config is not None:
        (workdir / POLICY_CONFIG_FILE).write_text(yaml.safe_dump(plan.policy_config, sort_keys=False))


def knob_tier_size(scenario: ScenarioConfig) -> int:
    topology = scenario.topology
    return topology.num_workers if topology.mode == "agg" else topology.num_prefill_workers


def _plan_inputs(scenario: ScenarioConfig, workdir: Path, start: StartOptions) -> PlanInputs:
    profile_npz = None
    if scenario.timing.kind == "profile":
        profile_npz = _export_profile(scenario, workdir)
    try:
        ports = free_ports(2 + (knob_tier_size(scenario) if scenario.topology.mode == "disagg" else 0))
    except OSError as error:
        raise DeploymentError(str(error)) from None
    return PlanInputs(
        scenario=scenario,
        model_path=write_tiny_model(workdir / "model"),
        model_name=start.model_name,
        http_port=start.http_port or ports[0],
        control_port=ports[1],
        bootstrap_ports=tuple(ports[2:]),
        knob_router_config_path=workdir / "knob_router.json",
        policy_config_path=workdir / POLICY_CONFIG_FILE,
        profile_npz=profile_npz,
        speedup=start.speedup,
        layout=start.layout,
        split_workers=start.split_workers,
    )


def _export_profile(scenario: ScenarioConfig, workdir: Path) -> Path:
    from envs.profiles import load_profile, save_profile
    from envs.sim.profile_catalog import profile_arrays

    timing = scenario.timing
    arrays = load_profile(timing.profile_path) if timing.profile_path else profile_arrays(str(timing.profile))
    return save_profile(arrays, workdir / "profile.npz")


def _write_token(workdir: Path) -> str:
    path = workdir / TOKEN_FILE
    token = secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def dynamo_environment(workdir: Path, token: str = "") -> dict[str, str]:
    """Loopback-only Dynamo: file discovery under the workdir, TCP requests, ZMQ events."""
    env = dict(os.environ)
    env.update(
        DYN_DISCOVERY_BACKEND="file",
        DYN_FILE_KV=str(workdir / DISCOVERY_DIR),
        DYN_REQUEST_PLANE="tcp",
        DYN_TCP_RPC_HOST="127.0.0.1",
        DYN_TCP_RESPONSE_STREAM_HOST="127.0.0.1",
        DYN_EVENT_PLANE_HOST="127.0.0.1",
        DYN_HTTP_RPC_HOST="127.0.0.1",
        DYN_SYSTEM_HOST="127.0.0.1",
        DYN_LOG=_dyn_log(env.get("DYN_LOG", "warn")),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")])
        ),
    )
    env[TOKEN_ENV] = token
    return env


def _dyn_log(user_filter: str) -> str:
    """The user's filter, plus the mocker's INFO start-up lines that readiness reads."""
    return user_filter if "dynamo_llm::mocker" in user_filter else f"{user_filter},dynamo_llm::mocker=info"


def _start(
    plan: LivePlan,
    workdir: Path,
    token: str,
    log: Callable[[str], None],
    start: StartOptions,
    scenario: ScenarioConfig,
) -> Deployment:
    env = dynamo_environment(workdir, token)
    records = []
    for spec in plan.processes:
        records.append(spawn(spec.name, spec.argv, workdir, env))
        log(f"started {spec.name} (pid {records[-1]['pid']})")
    deployment = Deployment(
        str(workdir),
        plan.model_name,
        plan.frontend_url,
        plan.control_url,
        records,
        start.speedup,
        scenario.name,
        start.layout,
        scenario.scaling.max_workers,
        scenario.scaling.startup_s,
    )
    (workdir / RECORD_FILE).write_text(json.dumps(asdict(deployment), indent=1) + "\n")
    return deployment


def _wait_ready(
    deployment: Deployment, num_workers: int | None, num_bootstrap: int, timeout_s: float
) -> None:
    """Until the knob router (if `num_workers`) sees all its real workers, every prefill engine has bound its
    bootstrap port, the frontend serves the model, and a one-token request comes back.

    Registration alone is not readiness: a worker registers before its engine starts (an engine
    that fails leaves a live process that fails every request), and the frontend lists the model
    before its routers hold the instances (a request then gets 503).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p for p in deployment.processes if not _alive(p)]
        if dead:
            raise DeploymentError(f"{dead[0]['name']} exited during start-up:\n{tail(Path(dead[0]['log']))}")
        num_bound = _check_engines(deployment)
        health = (_get_json(deployment.control_url + "/health") or {}) if num_workers is not None else {}
        if (
            num_bound >= num_bootstrap
            and health.get("num_workers") == num_workers
            and deployment.model_name in served_models(deployment.frontend_url)
            and _probe(deployment)
        ):
            return
        time.sleep(0.5)
    raise DeploymentError(
        f"the frontend did not serve {deployment.model_name} within {timeout_s:g} s; "
        f"see the logs in {deployment.workdir}"
    )


def _check_engines(deployment: Deployment) -> int:
    """The number of prefill engines that bound their bootstrap port; raise if an engine failed."""
    num_bound = 0
    for record in deployment.processes:
        if "-worker" not in record["name"]:
            continue
        text = Path(record["log"]).read_text(errors="replace") if Path(record["log"]).is_file() else ""
        for line in text.splitlines():
            if ENGINE_FAILURE_MARK in line:
                error = PortTakenError if PORT_TAKEN_MARK in line else DeploymentError
                raise error(f"{record['name']}: a mocker engine did not start: {strip_ansi(line)}")
        num_bound += text.count(BOOTSTRAP_MARK)
    return num_bound


def _probe(deployment: Deployment) -> bool:
    """One short request end to end; its prompt shares no block with any client's."""
    body = {
        "model": deployment.model_name,
        "prompt": f"readiness probe {secrets.token_hex(8)}",
        "max_tokens": 1,
    }
    request = urllib.request.Request(
        deployment.frontend_url + "/v1/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def served_models(frontend_url: str) -> list[str]:
    data = _get_json(frontend_url + "/v1/models")
    return [item.get("id") for item in (data or {}).get("data", [])]


def _get_json(url: str, timeout_s: float = 2.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def down(workdir: Path, grace_s: float = 10.0) -> list[str]:
    """Stop the recorded processes (SIGINT, then SIGKILL after `grace_s`); return their names."""
    running = [p for p in Deployment.load(workdir.resolve()).processes if _alive(p)]
    stop(running, signal.SIGINT, grace_s)
    return [p["name"] for p in running]


def status(workdir: Path) -> dict[str, Any]:
    """Each process alive or not, the models the frontend serves, and the knobs in force."""
    deployment = Deployment.load(workdir.resolve())
    return {
        "frontend": deployment.frontend_url,
        "control": deployment.control_url,
        "processes": {p["name"]: _process_status(p) for p in deployment.processes},
        "models": served_models(deployment.frontend_url),
        "knobs": _get_json(deployment.control_url + "/knobs"),
    }


def _process_status(record: dict[str, Any]) -> dict[str, Any]:
    """PID and liveness; a worker the P/D lever moved also its pool state (`envs.live.pools`)."""
    report = {"pid": record["pid"], "alive": _alive(record)}
    return report | ({"state": record["state"]} if "state" in record else {})
