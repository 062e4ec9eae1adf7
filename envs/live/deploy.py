"""Start, inspect and stop a local Dynamo deployment of a scenario (`poa-gym dynamo up|status|down`).

Everything a deployment writes lives in its workdir: the model folder, the profile NPZ, the
discovery store, one log per process, the control token (mode 0600) and `deployment.json`, which
records each process's PID and command line. `down` stops exactly those processes (each leads its
own process group) and nothing else: a PID whose command line no longer matches is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from envs.live.knob_router import TOKEN_ENV
from envs.live.plan import LivePlan, PlanInputs, plan_deployment
from envs.live.tiny_model import write_tiny_model
from envs.sim.config import ScenarioConfig

RECORD_FILE = "deployment.json"
TOKEN_FILE = "control.token"


class DeploymentError(RuntimeError):
    """A deployment that cannot start or be found; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """What `up` started, as recorded in the workdir."""

    workdir: str
    model_name: str
    frontend_url: str
    control_url: str
    processes: list[dict[str, Any]]  # name, pid, argv, log
    speedup: float = 1.0  # the mockers' speed-up over the hardware they emulate
    scenario: str | None = None

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


def up(
    scenario: ScenarioConfig,
    workdir: Path,
    *,
    speedup: float = 1.0,
    http_port: int = 0,
    model_name: str = "poa-gym-mock",
    timeout_s: float = 90.0,
    log: Callable[[str], None] = lambda _: None,
) -> Deployment:
    """Start the deployment and wait until the frontend serves the model; stop it all on failure."""
    if not dynamo_installed():
        raise DeploymentError("NVIDIA Dynamo is not installed in this environment: run `make dynamo`")
    workdir = workdir.resolve()
    if (workdir / RECORD_FILE).is_file() and any(_alive(p) for p in Deployment.load(workdir).processes):
        raise DeploymentError(
            f"{workdir}: a deployment is already running there (`poa-gym dynamo down` first)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    plan = plan_deployment(_plan_inputs(scenario, workdir, speedup, http_port, model_name))
    (workdir / "knob_router.json").write_text(json.dumps(plan.knob_router, indent=1) + "\n")
    token = _write_token(workdir)
    deployment = _start(plan, workdir, token, log, speedup, scenario.name)
    try:
        _wait_ready(deployment, knob_tier_size(scenario), timeout_s)
    except DeploymentError:
        down(workdir)
        raise
    return deployment


def knob_tier_size(scenario: ScenarioConfig) -> int:
    topology = scenario.topology
    return topology.num_workers if topology.mode == "agg" else topology.num_prefill_workers


def _plan_inputs(
    scenario: ScenarioConfig, workdir: Path, speedup: float, http_port: int, model_name: str
) -> PlanInputs:
    profile_npz = None
    if scenario.timing.kind == "profile":
        profile_npz = _export_profile(scenario, workdir)
    ports = free_ports(2 + (knob_tier_size(scenario) if scenario.topology.mode == "disagg" else 0))
    return PlanInputs(
        scenario=scenario,
        model_path=write_tiny_model(workdir / "model"),
        model_name=model_name,
        http_port=http_port or ports[0],
        control_port=ports[1],
        bootstrap_ports=tuple(ports[2:]),
        knob_router_config_path=workdir / "knob_router.json",
        profile_npz=profile_npz,
        speedup=speedup,
    )


def _export_profile(scenario: ScenarioConfig, workdir: Path) -> Path:
    from envs.profile_catalog import profile_arrays
    from envs.profiles import load_profile, save_profile

    timing = scenario.timing
    arrays = load_profile(timing.profile_path) if timing.profile_path else profile_arrays(str(timing.profile))
    return save_profile(arrays, workdir / "profile.npz")


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now (held together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


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
        DYN_FILE_KV=str(workdir / "discovery"),
        DYN_REQUEST_PLANE="tcp",
        DYN_TCP_RPC_HOST="127.0.0.1",
        DYN_TCP_RESPONSE_STREAM_HOST="127.0.0.1",
        DYN_EVENT_PLANE_HOST="127.0.0.1",
        DYN_HTTP_RPC_HOST="127.0.0.1",
        DYN_SYSTEM_HOST="127.0.0.1",
        DYN_LOG=env.get("DYN_LOG", "warn"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")])
        ),
    )
    env[TOKEN_ENV] = token
    return env


def _start(
    plan: LivePlan, workdir: Path, token: str, log: Callable[[str], None], speedup: float, scenario: str
) -> Deployment:
    env = dynamo_environment(workdir, token)
    records = []
    for spec in plan.processes:
        log_path = workdir / f"{spec.name}.log"
        with log_path.open("wb") as handle:
            process = subprocess.Popen(
                spec.argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        records.append({"name": spec.name, "pid": process.pid, "argv": list(spec.argv), "log": str(log_path)})
        log(f"started {spec.name} (pid {process.pid})")
    deployment = Deployment(
        str(workdir), plan.model_name, plan.frontend_url, plan.control_url, records, speedup, scenario
    )
    (workdir / RECORD_FILE).write_text(json.dumps(asdict(deployment), indent=1) + "\n")
    return deployment


def _wait_ready(deployment: Deployment, num_workers: int, timeout_s: float) -> None:
    """Until the knob router sees all its real workers and the frontend serves the model."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p for p in deployment.processes if not _alive(p)]
        if dead:
            raise DeploymentError(f"{dead[0]['name']} exited during start-up:\n{_tail(Path(dead[0]['log']))}")
        health = _get_json(deployment.control_url + "/health") or {}
        if health.get("num_workers") == num_workers and deployment.model_name in served_models(
            deployment.frontend_url
        ):
            return
        time.sleep(0.5)
    raise DeploymentError(
        f"the frontend did not serve {deployment.model_name} within {timeout_s:g} s; "
        f"see the logs in {deployment.workdir}"
    )


def served_models(frontend_url: str) -> list[str]:
    data = _get_json(frontend_url + "/v1/models")
    return [item.get("id") for item in (data or {}).get("data", [])]


def _get_json(url: str, timeout_s: float = 2.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _tail(path: Path, num_lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no log)"


def _alive(record: dict[str, Any]) -> bool:
    """The recorded process still runs the recorded command (not a recycled PID)."""
    proc = Path(f"/proc/{record['pid']}")
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        return False
    args = [part.decode(errors="replace") for part in cmdline if part]
    return not args or args == record["argv"]  # empty for an instant while the exec completes


def down(workdir: Path, grace_s: float = 10.0) -> list[str]:
    """Stop the recorded processes (SIGINT, then SIGKILL after `grace_s`); return their names."""
    deployment = Deployment.load(workdir.resolve())
    running = [p for p in deployment.processes if _alive(p)]
    for record in reversed(running):
        _signal_group(record["pid"], signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for record in running:
        if _alive(record):
            _signal_group(record["pid"], signal.SIGKILL)
    return [p["name"] for p in running]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # each process leads its own group (start_new_session)


def status(workdir: Path) -> dict[str, Any]:
    """Each process alive or not, the models the frontend serves, and the knobs in force."""
    deployment = Deployment.load(workdir.resolve())
    return {
        "frontend": deployment.frontend_url,
        "control": deployment.control_url,
        "processes": {p["name"]: {"pid": p["pid"], "alive": _alive(p)} for p in deployment.processes},
        "models": served_models(deployment.frontend_url),
        "knobs": _get_json(deployment.control_url + "/knobs"),
    }
