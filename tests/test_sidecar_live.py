"""The sidecar on a real Dynamo 1.6.1 deployment: mocker workers (one process per prefill worker),
the knob router, the frontend, and `poa-gym sidecar` as its own process.

Oracles:
* routing outcomes: the sidecar's policy (credit 0) loses the prefix cache, and its safe setting
  (Dynamo's credit 1) finds every repeated prefix: exactly 16 x 640 cached tokens of 32 x 740
  (the hit-rate oracle of tests/test_live.py, now with the sidecar setting the knobs);
* fault injection under the scenario's closed-loop sessions: the metrics endpoint down, the
  policy's ONNX file replaced by garbage, a prefill worker SIGKILLed, the sidecar SIGKILLed.
  Each fault shows in the sidecar's /health and /metrics (one fallback per episode of failure) and
  puts the safe setting on the knob router; no client request fails except those in flight on
  the killed worker, which no router could have saved.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from agents.sidecar.policies import DYNAMO_DEFAULT_KNOBS
from envs.live.client import prompt_text, routed_counts, run_prompts
from envs.live.deploy import Deployment, down, dynamo_installed, up
from envs.live.loadgen import ClosedLoopClients, session_stream
from envs.live.ports import free_ports
from envs.scenarios import load_scenario
from envs.sim.workload import SyntheticSessions

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not dynamo_installed(), reason="ai-dynamo not installed (run `make dynamo`)"),
]

SCENARIO = "llama70b-b200-3p3d-multiturn"
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "default" / "export"
SPEEDUP = 4.0
INTERVAL_S = 2.0  # half a second of wall clock


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sidecar")
    config, _ = load_scenario(SCENARIO, [])
    deployment = up(config, workdir, speedup=SPEEDUP, timeout_s=120, split_workers=True)
    try:
        yield deployment
    finally:
        down(workdir)


class MetricsProxy:
    """The frontend's /metrics on another port, which a test can take down (503)."""

    def __init__(self, frontend_url: str) -> None:
        self.up = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not proxy.up:
                    self.send_error(503, "metrics endpoint down (fault injection)")
                    return
                with urllib.request.urlopen(frontend_url + "/metrics", timeout=5) as response:
                    body = response.read()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/metrics"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


@contextmanager
def sidecar(deployment: Deployment, policy: str, metrics_url: str) -> Iterator[Callable[..., object]]:
    """`poa-gym sidecar` as a process; yields a function that GETs or PUTs on its endpoints."""
    port = free_ports(1)[0]
    argv = [sys.executable, "-m", "eval.cli", "sidecar", "--policy", policy, "--workdir", deployment.workdir]
    argv += ["--metrics-url", metrics_url, "--port", str(port), "--interval-s", str(INTERVAL_S)]
    argv += ["--stale-intervals", "2"]
    log_path = Path(deployment.workdir) / f"sidecar-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def call(path: str, body: dict | None = None, token: str | None = None) -> object:
        headers = {"Authorization": f"Bearer {deployment.token() if token is None else token}"}
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", data, headers, method="PUT" if body is not None else "GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code
        return text if path == "/metrics" else json.loads(text)

    call.process = process  # type: ignore[attr-defined]
    try:
        _wait(lambda: _answers(call), 30, f"the sidecar did not start: {log_path.read_text()[-2000:]}")
        yield call
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=10)


def _answers(call: Callable[..., object]) -> bool:
    try:
        return isinstance(call("/health"), dict)
    except OSError:
        return False


def _wait(condition: Callable[[], object], timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(message)


def _router_knobs(deployment: Deployment) -> dict[str, float]:
    with urllib.request.urlopen(deployment.control_url + "/knobs", timeout=5) as response:
        return json.loads(response.read())


def _counts(deployment: Deployment) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(deployment.control_url + "/metrics", timeout=5) as response:
        return routed_counts(response.read().decode())


def _hit_rate(deployment: Deployment, base_group: int) -> float:
    """16 prefixes x 2, one request at a time: the knob router's cached / prompt tokens."""
    import asyncio

    before = _counts(deployment)
    for i in range(2):
        prompts = [prompt_text(base_group + g, i, 640, 100) for g in range(16)]
        results = asyncio.run(run_prompts(deployment.frontend_url, deployment.model_name, prompts, 4, 1))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    after = _counts(deployment)
    cached = sum(v - before["cached_tokens"].get(w, 0.0) for w, v in after["cached_tokens"].items())
    prompt = sum(v - before["prompt_tokens"].get(w, 0.0) for w, v in after["prompt_tokens"].items())
    return cached / prompt


def test_the_sidecars_knobs_reach_the_router_and_change_its_routing(deployment):
    proxy = MetricsProxy(deployment.frontend_url)
    try:
        with sidecar(deployment, "static:overlap_score_credit=0", proxy.url) as call:
            _wait(lambda: _router_knobs(deployment)["overlap_score_credit"] == 0.0, 15, "policy not applied")
            blind = _hit_rate(deployment, 5000)
            assert call("/mode", {"mode": "safe"}, token="wrong") == 401
            assert call("/mode", {"mode": "fast"}) == 400
            assert call("/mode", {"mode": "safe"})["faults"] == {
                "operator": "an operator asked for the safe setting"
            }
            _wait(lambda: _router_knobs(deployment) == DYNAMO_DEFAULT_KNOBS, 15, "safe setting not applied")
            safe = _hit_rate(deployment, 6000)
            call("/mode", {"mode": "policy"})
            _wait(lambda: _router_knobs(deployment)["overlap_score_credit"] == 0.0, 15, "policy not restored")
            metrics = call("/metrics")
    finally:
        proxy.close()
    print({"credit 0 (policy)": round(blind, 3), "credit 1 (safe)": round(safe, 3)})
    assert safe == pytest.approx(16 * 640 / (32 * 740))
    assert blind < 0.7 * safe
    assert 'poa_gym_sidecar_fallbacks_total{fault="operator"} 1.0' in metrics


def test_faults_fall_back_recover_and_lose_no_request(deployment, tmp_path):
    policy = tmp_path / "policy"
    shutil.copytree(SHIPPED, policy)
    scenario, _ = load_scenario(SCENARIO, [])
    block_tokens = scenario.engine_for("prefill").block_size
    sessions = SyntheticSessions(scenario.workload, block_tokens, np.random.default_rng(11))
    clients = ClosedLoopClients(
        deployment.frontend_url,
        deployment.model_name,
        session_stream(sessions.session),
        block_tokens,
        SPEEDUP,
    )
    proxy = MetricsProxy(deployment.frontend_url)
    done = []
    try:
        clients.set_clients(16)
        with sidecar(deployment, str(policy), proxy.url) as call:
            acting = lambda: call("/health")["last_source"] == "policy"  # noqa: E731
            _wait(acting, 15, "the policy never acted")
            policy_knobs = _router_knobs(deployment)
            assert policy_knobs != DYNAMO_DEFAULT_KNOBS

            proxy.up = False
            _wait(lambda: "metrics" in call("/health")["faults"], 15, "metrics fault not raised")
            _wait(lambda: _router_knobs(deployment) == DYNAMO_DEFAULT_KNOBS, 5, "safe setting not applied")
            time.sleep(4 * INTERVAL_S / SPEEDUP)  # more intervals down: still one episode
            proxy.up = True
            _wait(
                lambda: not call("/health")["faults"] and acting(), 15, "no recovery from the metrics fault"
            )

            onnx = policy / "policy.onnx"
            good = onnx.read_bytes()
            onnx.write_bytes(b"\x00garbage" * 64)
            _wait(lambda: "reload" in call("/health")["faults"], 15, "garbage policy not detected")
            _wait(lambda: _router_knobs(deployment) == DYNAMO_DEFAULT_KNOBS, 5, "safe setting not applied")
            onnx.write_bytes(good)
            _wait(lambda: not call("/health")["faults"] and acting(), 15, "no recovery from the reload fault")
            metrics = call("/metrics")

            at_kill = _counts(deployment)
            kill_unix_s = _kill(deployment, "prefill-worker-1")
            time.sleep(1.0)
            after_kill = _counts(deployment)
            time.sleep(2.0)
            at_end = _counts(deployment)
            assert call("/health")["status"] == "ok"
            os.killpg(call.process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            last_knobs = _router_knobs(deployment)
            time.sleep(2.0)
            assert _router_knobs(deployment) == last_knobs  # the router keeps the last knobs
        clients.set_clients(0)
        done = clients.take()
    finally:
        clients.close(grace_s=10.0)
        done += clients.take()
        proxy.close()
    failed = [c for c in done if not c.ok]
    lost_to_kill = [c for c in failed if c.sent_unix_s <= kill_unix_s <= c.done_unix_s]
    print({"requests": len(done), "failed": len(failed), "in flight at the kill": len(lost_to_kill)})
    assert len(done) > 100
    # The knob router's own counts (the frontend sees the knob router as the prefill worker).
    used_before = {w for w, n in at_kill["requests"].items() if n > 0}
    used_after = {w for w, n in at_end["requests"].items() if n > after_kill["requests"].get(w, 0.0)}
    assert len(used_before) == 3 and used_after and used_after < used_before, (used_before, used_after)
    assert failed == lost_to_kill and len(lost_to_kill) <= 16, failed[:3]
    for fault in ("metrics", "reload"):
        assert f'poa_gym_sidecar_fallbacks_total{{fault="{fault}"}} 1.0' in metrics, metrics
    assert 'poa_gym_sidecar_fallbacks_total{fault="policy"} 0.0' in metrics


def _kill(deployment: Deployment, name: str) -> float:
    record = next(p for p in deployment.processes if p["name"] == name)
    os.killpg(record["pid"], signal.SIGKILL)
    return time.time()
