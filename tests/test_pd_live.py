"""The P/D lever on a live Dynamo 1.6.1 deployment: workers started and drained between the
prefill and decode pools while closed-loop clients run (`envs.live.pools`), by hand, by the
sidecar's policy and by `poa-gym dynamo scale`.

The deployment: 1P/2D with a budget of 3, one process per worker, the knob router in front of the
prefill pool (credit 0, so a new prefill worker gets its share of requests), speed-up 4.

Oracles:
* no request is lost by a drain: every request the clients sent completes (the frontend's
  `--migration-limit` resends one caught by a worker leaving discovery);
* a drained worker serves no request that arrived after its drain began: the clients' own
  `nvext` decode worker ids, and for the prefill stage (the frontend sees only the knob router
  there) the knob router's last decision per request;
* a new worker serves requests (the same two sources), and none before its start-up
  (`scaling.startup_s` over the speed-up, here 2 s of wall clock) has elapsed since the move
  asked for it: no decision for the new prefill worker, no completion by the new decode worker;
* the sidecar's `static:num_prefill_workers=2` reaches the pools on the lever's cadence, and
  values outside [1, budget - 1] are refused with the field and the rule;
* `poa-gym dynamo down` leaves no process of the deployment, the moved workers included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from envs.live.deploy import down, dynamo_installed, up
from envs.live.loadgen import ClosedLoopClients, session_stream
from envs.live.pools import move_to, serving
from envs.live.procs import alive
from envs.scenarios import load_scenario
from envs.sim.workload import SyntheticSessions

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not dynamo_installed(), reason="ai-dynamo not installed (run `make dynamo`)"),
]

SCENARIO = "llama70b-b200-1p2d"
SPEEDUP = 4.0
STARTUP_S = 8.0  # scenario seconds: 2 s of wall clock at SPEEDUP
OVERRIDES = [
    "router.router_semantics=dynamo-1.6",
    "scaling.max_workers=3",
    "router.overlap_score_credit=0",
    f"scaling.startup_s={STARTUP_S:g}",
]
NUM_CLIENTS = 16
CLI = [sys.executable, "-m", "eval.cli"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pd")
    config, _ = load_scenario(SCENARIO, OVERRIDES)
    deployment = up(config, workdir, speedup=SPEEDUP, timeout_s=120, split_workers=True)
    try:
        yield deployment
    finally:
        down(workdir)


def records(deployment) -> dict[str, dict]:
    data = json.loads((Path(deployment.workdir) / "deployment.json").read_text())
    return {p["name"]: p for p in data["processes"]}


def pool_sizes(deployment) -> tuple[int, int]:
    processes = list(records(deployment).values())
    return len(serving(processes, "prefill")), len(serving(processes, "decode"))


def prefill_choices(deployment) -> dict[str, dict]:
    """The knob router's last decision per request (a refused forward is decided again)."""
    with urllib.request.urlopen(deployment.control_url + "/decisions", timeout=10) as response:
        decisions = json.loads(response.read())
    return {d["request_id"]: d for d in sorted(decisions, key=lambda d: d["seq"])}


def test_a_move_there_and_back_loses_no_request(deployment):
    config, _ = load_scenario(SCENARIO, OVERRIDES)
    block_tokens = config.engine.block_size
    sessions = SyntheticSessions(config.workload, block_tokens, np.random.default_rng(5))
    stream = session_stream(sessions.session)
    clients = ClosedLoopClients(deployment.frontend_url, deployment.model_name, stream, block_tokens, SPEEDUP)
    clients.set_clients(NUM_CLIENTS)
    try:
        time.sleep(2.0)
        there = move_to(Path(deployment.workdir), 2)  # decode-worker-1 drains, prefill-worker-1 starts
        assert pool_sizes(deployment) == (2, 1)
        time.sleep(3.0)
        back = move_to(Path(deployment.workdir), 1)  # prefill-worker-1 drains, decode-worker-2 starts
        assert pool_sizes(deployment) == (1, 2)
        time.sleep(3.0)
        clients.set_clients(0)  # each client stops after its request in flight
        deadline = time.monotonic() + 30.0
        while clients.num_in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
        assert clients.num_in_flight == 0
    finally:
        clients.close()
    done = clients.take()
    failed = [c.error for c in done if not c.ok]
    assert len(done) > 500 and not failed, failed[:3]

    workers = records(deployment)
    new_prefill, drained_decode, new_decode = (
        workers["prefill-worker-1"],
        workers["decode-worker-1"],
        workers["decode-worker-2"],
    )
    states = (new_prefill["state"], drained_decode["state"], new_decode["state"])
    assert states == ("drained", "drained", "serving")
    assert not new_prefill["killed"] and not drained_decode["killed"]
    assert all(not alive(w) for w in (new_prefill, drained_decode))

    decode_ids = [c.decode_worker for c in done]
    late_decode = [
        c
        for c in done
        if c.decode_worker == drained_decode["instance_id"]
        and c.sent_unix_s > drained_decode["unregistered_unix_s"]
    ]
    assert decode_ids.count(new_decode["instance_id"]) > 0 and not late_decode

    choices = prefill_choices(deployment).values()
    by_new_prefill = [d for d in choices if d["chosen"] == new_prefill["instance_id"]]
    late_prefill = [d for d in by_new_prefill if d["time_unix_s"] > new_prefill["unregistered_unix_s"]]
    assert by_new_prefill and not late_prefill

    first_decode_s = min(c.done_unix_s for c in done if c.decode_worker == new_decode["instance_id"])
    first_prefill_s = min(d["time_unix_s"] for d in by_new_prefill)
    startup_wall_s = STARTUP_S / SPEEDUP
    assert new_prefill["startup_wall_s"] == new_decode["startup_wall_s"] == startup_wall_s
    assert first_prefill_s >= new_prefill["started_unix_s"] + startup_wall_s
    assert first_decode_s >= new_decode["started_unix_s"] + startup_wall_s
    assert min(s.duration_s for s in (*there.steps, *back.steps) if s.action == "start") >= startup_wall_s
    steps = "; ".join(f"{s.action} {s.name} {s.duration_s:.2f} s" for s in (*there.steps, *back.steps))
    print(
        f"\nsent {len(done)}, failed {len(failed)}; moves {there.duration_s:.2f} s, {back.duration_s:.2f} s; "
        f"{steps}; first request: new prefill worker "
        f"{first_prefill_s - new_prefill['started_unix_s']:.2f} s after its start (decided), new decode "
        f"worker {first_decode_s - new_decode['started_unix_s']:.2f} s (completed), "
        f"start-up {startup_wall_s:g} s; served: new prefill "
        f"{len(by_new_prefill)}, new decode {decode_ids.count(new_decode['instance_id'])}"
    )


def test_the_sidecar_moves_a_worker_on_the_levers_cadence(deployment):
    assert pool_sizes(deployment) == (1, 2)
    argv = [*CLI, "sidecar", "--workdir", deployment.workdir, "--interval-s", "2", "--lever-every", "2"]
    result = subprocess.run(
        [*argv, "--policy", "static:num_prefill_workers=2", "--intervals", "4"],
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "P/D move done" in result.stderr
    assert pool_sizes(deployment) == (2, 1)
    refused = subprocess.run(
        [*argv, "--policy", "static:num_prefill_workers=3", "--intervals", "1"],
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "num_prefill_workers=3 must lie in [1, 2]" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_dynamo_scale_moves_back_and_refuses_a_pool_without_workers(deployment):
    scale = [*CLI, "dynamo", "scale", "--workdir", deployment.workdir, "--prefill"]
    result = subprocess.run([*scale, "1"], timeout=120, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert pool_sizes(deployment) == (1, 2) and "1 prefill / 2 decode" in result.stdout
    refused = subprocess.run([*scale, "0"], timeout=60, capture_output=True, text=True)
    assert refused.returncode == 2 and "num_prefill_workers: must be an integer in [1, 2]" in refused.stderr


def test_down_leaves_no_process_of_the_deployment(deployment):
    status = subprocess.run([*CLI, "dynamo", "status", "--workdir", deployment.workdir], capture_output=True)
    assert status.returncode == 0  # drained workers are reported, not counted as failures
    subprocess.run([*CLI, "dynamo", "down", "--workdir", deployment.workdir], check=True, timeout=60)
    assert not [name for name, record in records(deployment).items() if alive(record)]
    mine = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if deployment.workdir in cmdline:
            mine.append((pid, cmdline.replace("\0", " ")[:120]))
    assert not mine
