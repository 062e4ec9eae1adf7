"""Live P/D moves: start and drain single mocker workers of a deployment's prefill and decode pools.

A deployment started with one process per worker (`poa-gym dynamo up --split-workers`) and a
budget (the scenario's `scaling.max_workers`, recorded as `max_workers`) moves workers between
its pools as the simulator's `num_prefill_workers` lever does (`envs.levers`, `envs.sim.scaling`):
the prefill pool gets the target, the decode pool the rest of the budget, and each pool's
highest-numbered worker is the one drained.

* A new worker runs its pool's first worker's command line (`up`'s: engine, timing NPZ,
  speed-up), with a new bootstrap port for a prefill worker. It is routable, and the start done,
  once it registered in file discovery (the discovery record names a TCP port it listens on) and,
  for a prefill worker, its engine bound the bootstrap port: the readiness `up` waits for.
* A new worker costs the scenario's `scaling.startup_s` (recorded as `startup_s`), divided by the
  deployment's speed-up as every modelled duration is: its process is launched that long after
  the move asks for it, so it takes no request before, as the simulator's starting worker
  (`envs.sim.scaling`) and a real engine, which registers once loaded. The 1.6.1 mocker's own
  `--startup-time S` does not do that: the worker registers in discovery first, then sleeps S
  wall-clock seconds (not divided by `--speedup-ratio`) before its engine starts, and holds every
  request the routers send it meanwhile (in a 2-s start under 16 clients, 189 requests waited up
  to 2.06 s), a cost the simulator does not charge.
* A drained worker leaves discovery first, then gets SIGTERM: the order of Dynamo's own
  `graceful_shutdown_with_discovery` (unregister, a grace period, then `runtime.shutdown()`),
  which the 1.6.1 mocker skips (on SIGTERM it calls `runtime.shutdown()` at once). The drain
  deletes the worker's file-discovery records itself (`unregistered_unix_s`), waits
  `UNREGISTER_GRACE_S` for the routers to drop it, and sends SIGTERM; the runtime then waits for
  the requests the worker holds (its engine runs until then) and exits. One still running
  `grace_s` after the SIGTERM is SIGKILLed, losing what it held; the move says so. A request the
  frontend was routing to the worker as it left fails there (HTTP 503, 1-2 in 1,600-2,200 in
  3 of 8 runs of tests/test_pd_live.py); the frontend's `--migration-limit` (`envs.live.plan`)
  sends it to another worker.

Every start and drain lands in `deployment.json` (the worker's `pool`, `state`, times and
Dynamo `instance_id`), so `poa-gym dynamo status` and `down` see exactly what runs. One move at a
time per workdir: a move holds `pools.lock`, and a second one is refused, not queued.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.live.deploy import (
    BOOTSTRAP_MARK,
    DISCOVERY_DIR,
    ENGINE_FAILURE_MARK,
    RECORD_FILE,
    Deployment,
    DeploymentError,
    dynamo_environment,
)
from envs.live.ports import free_ports
from envs.live.procs import (
    KILL_WAIT_S,
    alive,
    listening_ports,
    signal_group,
    spawn,
    strip_ansi,
    tail,
    wait_gone,
)

POOLS = ("prefill", "decode")
WORKER_NAME = re.compile(r"^(prefill|decode)-worker-(\d+)$")
LOCK_FILE = "pools.lock"
DRAIN_GRACE_S = 30.0  # a drained worker's time to finish what it holds before SIGKILL
START_TIMEOUT_S = 60.0
POLL_S = 0.1
# From leaving discovery to SIGTERM: the routers' file watches take milliseconds (Dynamo's own
# default grace is 5 s, for etcd and Kubernetes watches).
UNREGISTER_GRACE_S = 0.5
GONE = ("draining", "drained", "failed")  # states that no longer count against a pool's target
_RECORD_LOCK = threading.Lock()  # a move's starts and drains update the record from threads


class PoolError(DeploymentError):
    """A move the deployment cannot make; the message names the field and the rule."""


class MoveInProgress(PoolError):
    """Another move holds the workdir's pools.lock."""


@dataclass(frozen=True, slots=True)
class WorkerStep:
    """One worker started or drained, and how long it took on the wall clock."""

    name: str
    pool: str
    action: str  # "start": asked for (start-up included) to routable; "drain": SIGTERM to exit
    duration_s: float
    instance_id: int | None
    killed: bool = False  # a drain that outlived its grace and was SIGKILLed


@dataclass(frozen=True, slots=True)
class MoveReport:
    num_prefill: int  # the pools' sizes after the move
    num_decode: int
    steps: tuple[WorkerStep, ...]
    duration_s: float


def pool_of(record: dict[str, Any]) -> tuple[str, int] | None:
    """(pool, index) of a single-worker process record, None for anything else."""
    match = WORKER_NAME.match(record["name"])
    return (match.group(1), int(match.group(2))) if match else None


def serving(processes: list[dict[str, Any]], pool: str) -> list[dict[str, Any]]:
    """The pool's workers that count against its target (starting or serving), by index."""
    members = [p for p in processes if (pool_of(p) or ("",))[0] == pool]
    members = [p for p in members if p.get("state") not in GONE and alive(p)]
    return sorted(members, key=lambda p: pool_of(p)[1])  # type: ignore[index]


def check_movable(deployment: Deployment) -> int:
    """The budget the P/D lever splits; PoolError if this deployment cannot move a worker."""
    record = Path(deployment.workdir) / RECORD_FILE
    names = [p["name"] for p in deployment.processes]
    if not any(name.startswith("prefill-") for name in names):
        raise PoolError(
            f"{record}: no prefill workers; the num_prefill_workers lever needs a disaggregated scenario"
        )
    if "prefill-workers" in names or "decode-workers" in names:
        raise PoolError(
            f"{record}: the workers run as one process per pool; moving one needs one process per worker "
            "(start with `poa-gym dynamo up --split-workers`)"
        )
    if deployment.max_workers is None or deployment.max_workers < 3:
        raise PoolError(
            f"{record}: max_workers is {deployment.max_workers}: the num_prefill_workers lever needs the "
            "scenario's scaling.max_workers, the budget it splits, at 3 or more, since each pool keeps "
            "one worker (start with `--set scaling.max_workers=N`)"
        )
    return deployment.max_workers


def check_target(num_prefill: float, budget: int) -> int:
    """`num_prefill` as a prefill pool size: an integer in [1, budget - 1]."""
    if not (
        math.isfinite(num_prefill) and num_prefill == int(num_prefill) and 1 <= num_prefill <= budget - 1
    ):
        raise PoolError(
            f"num_prefill_workers: must be an integer in [1, {budget - 1}] (scaling.max_workers {budget} "
            f"leaves one decode worker at least), got {num_prefill:g}"
        )
    return int(num_prefill)


def move_to(
    workdir: Path,
    num_prefill: float,
    *,
    grace_s: float = DRAIN_GRACE_S,
    timeout_s: float = START_TIMEOUT_S,
    log: Callable[[str], None] = lambda _: None,
) -> MoveReport:
    """Start and drain workers, all at once, until the prefill pool has `num_prefill` workers and
    the decode pool the rest of the budget; return once every start is routable and every
    drained worker has exited. Raises PoolError (MoveInProgress while another move runs)."""
    workdir = workdir.resolve()
    start_s = time.monotonic()
    with _move_lock(workdir):
        deployment = Deployment.load(workdir)
        budget = check_movable(deployment)
        startup_wall_s = deployment.startup_s / deployment.speedup
        targets = {"prefill": check_target(num_prefill, budget), "decode": budget - int(num_prefill)}
        jobs: list[Callable[[], WorkerStep]] = []
        for pool in POOLS:
            change = targets[pool] - len(serving(deployment.processes, pool))
            jobs += [lambda p=pool: start_worker(workdir, p, timeout_s, log, startup_wall_s)] * max(change, 0)
            jobs += [lambda p=pool: drain_worker(workdir, p, grace_s, log)] * max(-change, 0)
        with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as executor:
            futures = [executor.submit(job) for job in jobs]
            steps = tuple(future.result() for future in futures)
    return MoveReport(targets["prefill"], targets["decode"], steps, time.monotonic() - start_s)


def start_worker(
    workdir: Path, pool: str, timeout_s: float, log: Callable[[str], None], startup_wall_s: float = 0.0
) -> WorkerStep:
    """Start one worker of `pool` with `up`'s command line, launched after its start-up
    (`startup_wall_s`, wall clock); return once it is routable."""
    start_s = time.monotonic()
    requested_unix_s = time.time()
    if startup_wall_s > 0:
        log(f"starting a {pool} worker: {startup_wall_s:g} s of start-up before its process launches")
        time.sleep(startup_wall_s)
    token = (workdir / "control.token").read_text().strip()
    with _records(workdir) as processes:
        members = [p for p in processes if (pool_of(p) or ("",))[0] == pool]
        template = min(members, key=lambda p: pool_of(p)[1])  # type: ignore[index]
        name = f"{pool}-worker-{1 + max(pool_of(p)[1] for p in members)}"  # type: ignore[index]
        record = spawn(name, _worker_argv(template["argv"]), workdir, dynamo_environment(workdir, token))
        processes.append(
            record
            | {
                "pool": pool,
                "state": "starting",
                "started_unix_s": requested_unix_s,  # when the move asked for it
                "startup_wall_s": startup_wall_s,
                "spawned_unix_s": time.time(),
            }
        )
    log(f"started {name} (pid {record['pid']})")
    try:
        instance_id = _wait_routable(record, pool, workdir, timeout_s)
    except PoolError:
        signal_group(record["pid"], signal.SIGKILL)
        _set(workdir, name, state="failed")
        raise
    _set(workdir, name, state="serving", instance_id=instance_id, ready_unix_s=time.time())
    return WorkerStep(name, pool, "start", time.monotonic() - start_s, instance_id)


def drain_worker(workdir: Path, pool: str, grace_s: float, log: Callable[[str], None]) -> WorkerStep:
    """Drain the pool's highest-numbered worker: SIGTERM, then SIGKILL after `grace_s`."""
    with _records(workdir) as processes:
        members = serving(processes, pool)
        if len(members) < 2:
            raise PoolError(f"{pool} pool: a pool keeps one worker at least; not draining its last")
        record = members[-1]
        record["instance_id"] = record.get("instance_id") or _instance_of(record, workdir)
        record.update(state="draining", drain_started_unix_s=time.time())
    start_s = time.monotonic()
    unregistered_unix_s = _unregister(record["instance_id"], workdir)
    time.sleep(UNREGISTER_GRACE_S)
    signal_group(record["pid"], signal.SIGTERM)
    killed = not wait_gone([record], grace_s)
    if killed:
        signal_group(record["pid"], signal.SIGKILL)
        wait_gone([record], KILL_WAIT_S)
        log(f"{record['name']}: still running {grace_s:g} s after SIGTERM; SIGKILLed, losing what it held")
    duration_s = time.monotonic() - start_s
    _set(
        workdir,
        record["name"],
        state="drained",
        drained_unix_s=time.time(),
        unregistered_unix_s=unregistered_unix_s,
        killed=killed,
    )
    log(f"drained {record['name']} in {duration_s:.1f} s")
    return WorkerStep(record["name"], pool, "drain", duration_s, record["instance_id"], killed)


def _worker_argv(argv: list[str]) -> list[str]:
    """A copy of `argv` with a free bootstrap port in place of the template's (prefill only)."""
    argv = list(argv)
    if "--bootstrap-ports" in argv:
        try:
            argv[argv.index("--bootstrap-ports") + 1] = str(free_ports(1)[0])
        except OSError as error:
            raise PoolError(str(error)) from None
    return argv


def _wait_routable(record: dict[str, Any], pool: str, workdir: Path, timeout_s: float) -> int:
    """The new worker's Dynamo instance id, once registered (and its bootstrap port bound)."""
    deadline = time.monotonic() + timeout_s
    log_path = Path(record["log"])
    while time.monotonic() < deadline:
        if not alive(record):
            raise PoolError(f"{record['name']} exited during start-up:\n{tail(log_path)}")
        text = log_path.read_text(errors="replace") if log_path.is_file() else ""
        failure = next((line for line in text.splitlines() if ENGINE_FAILURE_MARK in line), None)
        if failure is not None:
            raise PoolError(f"{record['name']}: its mocker engine did not start: {strip_ansi(failure)}")
        instance_id = _instance_of(record, workdir)
        if instance_id is not None and (pool != "prefill" or BOOTSTRAP_MARK in text):
            return instance_id
        time.sleep(POLL_S)
    raise PoolError(f"{record['name']} was not routable within {timeout_s:g} s; see {log_path}")


def _unregister(instance_id: int | None, workdir: Path) -> float:
    """Delete the worker's file-discovery records (what `unregister_endpoint_instance` does);
    return when (Unix seconds). The routers watch the folder and drop the worker."""
    for path in (workdir / DISCOVERY_DIR / "v1" / "instances").glob("*"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if int(json.loads(path.read_text())["instance_id"]) == instance_id:
                path.unlink()
    return time.time()


def _instance_of(record: dict[str, Any], workdir: Path) -> int | None:
    """The worker's Dynamo instance id: the discovery record of a `generate` endpoint whose TCP
    address is a port the worker's process listens on."""
    ports = listening_ports(record["pid"])
    for path in (workdir / DISCOVERY_DIR / "v1" / "instances").glob("*"):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError, AttributeError):
            entry = json.loads(path.read_text())
            address = entry["transport"]["tcp"].split("/", 1)[0]
            if entry["endpoint"] == "generate" and int(address.rsplit(":", 1)[1]) in ports:
                return int(entry["instance_id"])
    return None


@contextlib.contextmanager
def _move_lock(workdir: Path) -> Iterator[None]:
    with (workdir / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MoveInProgress(
                f"{workdir / LOCK_FILE}: another move is in progress; try again after it"
            ) from None
        yield


@contextlib.contextmanager
def _records(workdir: Path) -> Iterator[list[dict[str, Any]]]:
    """The recorded processes, written back (atomically) when the block ends."""
    path = workdir / RECORD_FILE
    with _RECORD_LOCK:
        data = json.loads(path.read_text())
        yield data["processes"]
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(temporary, path)


def _set(workdir: Path, name: str, **fields: Any) -> None:
    with _records(workdir) as processes:
        next(p for p in processes if p["name"] == name).update(fields)
