"""Start-up of a real Dynamo 1.6.1 deployment when a port it was given is taken.

A mocker binds its prefill bootstrap port only after it registers, so a taken port used to pass
readiness and fail every request routed to that worker (a CI run saw 503s). Fault injection: a
listening socket holds the port `up` hands the first prefill worker. Oracles: `up` starts again on
other ports and then serves every request; when every attempt is given a taken port, `up` fails
with the worker's own error and leaves no process running.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from envs.live import deploy
from envs.live.client import prompt_text, run_prompts
from envs.live.deploy import Deployment, DeploymentError, _alive, down, dynamo_installed, up
from envs.scenarios import load_scenario

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not dynamo_installed(), reason="ai-dynamo not installed (run `make dynamo`)"),
]

SCENARIO = ("llama70b-b200-1p2d", ["router.router_semantics=dynamo-1.6"])


@pytest.fixture
def held_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def _taken_first(held: int, num_taken_calls: int):
    """`free_ports` whose last port (the first bootstrap port) is `held` for the first calls."""
    real = deploy.free_ports
    calls = []

    def free_ports(count: int) -> list[int]:
        calls.append(count)
        ports = real(count)
        return [*ports[:-1], held] if len(calls) <= num_taken_calls else ports

    return free_ports, calls


def test_a_taken_bootstrap_port_starts_again_and_serves(tmp_path, monkeypatch, held_port):
    free_ports, calls = _taken_first(held_port, num_taken_calls=1)
    monkeypatch.setattr(deploy, "free_ports", free_ports)
    config, _ = load_scenario(*SCENARIO)
    messages: list[str] = []
    deployment = up(config, tmp_path, speedup=4.0, timeout_s=120, log=messages.append)
    try:
        assert len(calls) == 2
        assert any("Address already in use" in m and "starting again" in m for m in messages), messages
        prompts = [prompt_text(group, 0, 256, 32) for group in range(4)]
        results = asyncio.run(run_prompts(deployment.frontend_url, deployment.model_name, prompts, 4, 4))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    finally:
        down(tmp_path)


def test_a_port_taken_on_every_attempt_fails_with_the_workers_error(tmp_path, monkeypatch, held_port):
    free_ports, calls = _taken_first(held_port, num_taken_calls=deploy.START_ATTEMPTS)
    monkeypatch.setattr(deploy, "free_ports", free_ports)
    config, _ = load_scenario(*SCENARIO)
    with pytest.raises(DeploymentError, match=r"prefill-workers.*Address already in use.*3 attempts"):
        up(config, tmp_path, speedup=4.0, timeout_s=120)
    assert len(calls) == deploy.START_ATTEMPTS
    assert not any(_alive(p) for p in Deployment.load(Path(tmp_path)).processes)
