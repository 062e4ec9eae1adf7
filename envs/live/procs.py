"""The processes of a local deployment: start one, tell whether it still runs, stop a set of them,
and find the TCP ports it listens on (how a worker's Dynamo instance is told apart from another's).

Each process leads its own process group (`start_new_session`), so a signal reaches what it
spawned too, and a recorded PID counts as alive only while it runs the recorded command line (a
recycled PID is left alone).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

KILL_WAIT_S = 5.0
POLL_S = 0.05
TCP_TABLES = ("net/tcp", "net/tcp6")
TCP_LISTEN_STATE = "0A"


def spawn(name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Start `argv` in its own session, its output in `workdir/NAME.log`; its deployment record."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as handle:
        process = subprocess.Popen(
            list(argv),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=workdir,
            start_new_session=True,
        )
    return {"name": name, "pid": process.pid, "argv": list(argv), "log": str(log_path)}


def alive(record: Mapping[str, Any]) -> bool:
    """The recorded process still runs the recorded command (not a recycled PID, not a zombie)."""
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


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # each process leads its own group (start_new_session)


def wait_gone(records: Iterable[Mapping[str, Any]], timeout_s: float) -> bool:
    """Wait until none of `records` runs (True), or `timeout_s` passed (False)."""
    records = list(records)
    deadline = time.monotonic() + timeout_s
    while any(alive(r) for r in records):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def stop(records: Sequence[Mapping[str, Any]], sig: signal.Signals, grace_s: float) -> list[str]:
    """Send `sig` to each running record (last first), SIGKILL what still runs after `grace_s`,
    and wait for the kernel to end it; return the names SIGKILLed."""
    running = [r for r in records if alive(r)]
    for record in reversed(running):
        signal_group(record["pid"], sig)
    wait_gone(running, grace_s)
    killed = [r for r in running if alive(r)]
    for record in killed:
        signal_group(record["pid"], signal.SIGKILL)
    wait_gone(killed, KILL_WAIT_S)  # a killed process lingers until the kernel ends it
    return [r["name"] for r in killed]


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its sockets' inodes matched in the kernel's tables)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in TCP_TABLES:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == TCP_LISTEN_STATE and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def tail(path: Path, num_lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no log)"


def strip_ansi(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
