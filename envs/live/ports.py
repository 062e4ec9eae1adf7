"""Ports for a local deployment's fixed listeners (HTTP, control, prefill bootstrap)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
PORT_FLOOR = 10000
PORT_SPAN = 12000


def free_ports(count: int) -> list[int]:
    """Ports free now, drawn below the kernel's ephemeral range.

    A port is only checked here and bound later by a Dynamo process; in between, every process
    of the deployment binds ephemeral ports (request plane, ZMQ, metrics), so a port from that
    range can be taken before its owner starts (seen as "Address already in use" in a mocker).
    """
    low = _ephemeral_range()[0]
    candidates = list(range(max(PORT_FLOOR, low - PORT_SPAN), low))
    random.SystemRandom().shuffle(candidates)
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        if len(sockets) < count:
            raise OSError(f"fewer than {count} free ports below {low} on 127.0.0.1")
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path(EPHEMERAL_RANGE_FILE).read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
