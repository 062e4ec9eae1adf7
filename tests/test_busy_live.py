"""Busy thresholds on a real Dynamo 1.6.1 frontend (plain Dynamo, `--layout dynamo`): the sidecar
sets them hop-free through `POST /busy_threshold`, and the simulator's rule matches the frontend's.

Oracles: the frontend's own `GET /busy_threshold` (the sidecar's value reached it); the reference
system, Dynamo's frontend with mocker workers, against the simulator on the same scenario, Poisson
arrivals and run length, seed by seed (`eval.busy_check`): both turn requests away at a tight
threshold, almost none at a loose one and none without, and complete the same requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from envs.live.deploy import down, dynamo_installed, up
from envs.scenarios import load_scenario
from eval.busy_check import DURATION_S, RATE_RPS, SCENARIO, BusyComparison, compare, open_loop

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not dynamo_installed(), reason="ai-dynamo not installed (run `make dynamo`)"),
]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("busy")
    config, _ = load_scenario(SCENARIO, [])
    deployment = up(config, workdir, layout="dynamo", timeout_s=120)
    try:
        yield deployment
    finally:
        down(workdir)


def thresholds(deployment) -> dict:
    with urllib.request.urlopen(deployment.frontend_url + "/busy_threshold", timeout=5) as response:
        return json.loads(response.read())["thresholds"][0]


def test_the_sidecar_sets_the_busy_threshold_on_the_frontend_without_a_knob_router(deployment):
    assert thresholds(deployment)["active_prefill_tokens_threshold_frac"] is None
    argv = [sys.executable, "-m", "eval.cli", "sidecar", "--workdir", deployment.workdir]
    argv += ["--policy", "static:active_prefill_tokens_threshold_frac=0.75", "--intervals", "2"]
    argv += ["--interval-s", "0.5"]
    subprocess.run(argv, check=True, timeout=60, capture_output=True)
    assert thresholds(deployment)["active_prefill_tokens_threshold_frac"] == pytest.approx(0.75)
    refused = subprocess.run(
        [*argv[:6], "--policy", "knee", "--intervals", "1"], timeout=60, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "need the knob router" in refused.stderr


def outcomes(deployment, frac: float, seeds: int = 1) -> BusyComparison:
    """Poisson 60 req/s for 20 s through both sides, the same arrivals for each seed 0 .. seeds-1."""
    scenario, _ = load_scenario(SCENARIO, [f"router.active_prefill_tokens_threshold_frac={frac}"])
    return compare(open_loop(scenario, RATE_RPS, DURATION_S), deployment, range(seeds))


def sides(comparison: BusyComparison):
    """The seeds' outcomes, simulator and Dynamo."""
    return [(pair.sim, pair.real) for pair in comparison.pairs]


def test_the_simulator_turns_away_what_dynamos_frontend_turns_away(deployment):
    # Busy past 0.25 x 8192 = 2048 booked prompt tokens: about one uncached prompt per worker.
    tight = outcomes(deployment, 0.25, seeds=2)
    for sim, real in sides(tight):
        assert sim.rejected_share > 0.05 and real.rejected_share > 0.05
        # Every turned-away request comes back, so as many complete as without shedding.
        assert abs(real.num_completed / sim.num_completed - 1) < 0.05
    # Dynamo turns away more: the same rule on the same booked tokens, but each busy spell lasts
    # longer live and the share at this tight threshold amplifies that (eval/RESULTS.md). One
    # run's share hangs on its arrivals (seed 3: Dynamo 13.8-15.8%, simulator 16.3%), so the band
    # is on the ratio of the two seeds' mean shares: measured 1.42 and 1.45 (1.21-1.28 over 4
    # seeds, 1.23 over 8); a lag-free frontend would still give about 1.13 (the simulator's own
    # spread under negligible jitter), and a loaded machine more (seed 0 alone up to 2.0x).
    assert 1.0 < tight.share_ratio < 2.1
    for sim, real in sides(outcomes(deployment, 0.5)):  # twice the room: almost nothing turned away
        assert sim.rejected_share < 0.02 and real.rejected_share < 0.02
    for sim, real in sides(outcomes(deployment, 1e6)):  # a threshold no load reaches
        assert sim.num_rejected == 0 and real.num_rejected == 0
