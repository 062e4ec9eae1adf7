"""A real Dynamo 1.6.1 deployment on loopback: mocker workers, the knob router, the frontend.

Oracles: the knob router's counters against what the client sent (every request routed once,
prompt tokens exact with the byte-level tokenizer); the prefix cache's hits against the prompts'
shared blocks; `down` leaves none of the recorded processes alive, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from envs.live.client import prompt_text, routed_counts, run_prompts
from envs.live.deploy import Deployment, _alive, down, dynamo_environment, dynamo_installed, status, up
from envs.scenarios import load_scenario
from tests.live_oracle import NUM_QUERIES

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not dynamo_installed(), reason="ai-dynamo not installed (run `make dynamo`)"),
]


DEPLOYMENTS = {
    "agg": ("agg-4w-prefix", ["workload.num_prefix_groups=64"]),
    "1p2d": ("llama70b-b200-1p2d", ["router.router_semantics=dynamo-1.6"]),
    # Three prefill workers: the disaggregated tier where the knobs have a choice to make.
    "3p3d": ("llama70b-b200-3p3d-multiturn", []),
}


@dataclass(frozen=True)
class Live:
    name: str
    deployment: Deployment

    @property
    def has_choice(self) -> bool:
        return self.name != "1p2d"  # one prefill worker: every rule picks it


@pytest.fixture(scope="module", params=list(DEPLOYMENTS))
def live(request, tmp_path_factory):
    """One deployment at a time (pytest groups the tests by this parameter): each holds ~35
    inotify instances, and Linux's default per-user limit is 128."""
    scenario, overrides = DEPLOYMENTS[request.param]
    workdir = tmp_path_factory.mktemp(request.param)
    config, _ = load_scenario(scenario, overrides)
    deployment = up(config, workdir, speedup=4.0, timeout_s=120)
    try:
        yield Live(request.param, deployment)
    finally:
        down(workdir)
        assert not any(_alive(p) for p in deployment.processes)


def _counts(deployment: Deployment) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(deployment.control_url + "/metrics", timeout=5) as response:
        return routed_counts(response.read().decode())


def _put_knobs(deployment: Deployment, knobs: dict, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        deployment.control_url + "/knobs",
        json.dumps(knobs).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {deployment.token() if token is None else token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _send(deployment: Deployment, prompts: list[str], concurrency: int = 4):
    return asyncio.run(run_prompts(deployment.frontend_url, deployment.model_name, prompts, 4, concurrency))


def _delta(after: dict, before: dict, key: str) -> dict[str, float]:
    return {w: v - before[key].get(w, 0.0) for w, v in after[key].items() if v - before[key].get(w, 0.0)}


def test_every_request_is_routed_once_with_exact_tokens(live):
    deployment = live.deployment
    assert status(Path(deployment.workdir))["models"].count(deployment.model_name) == 1
    prompts = [prompt_text(group, i, 640, 100) for group in range(6) for i in range(3)]
    before = _counts(deployment)
    results = _send(deployment, prompts)
    after = _counts(deployment)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert sum(_delta(after, before, "requests").values()) == len(prompts)
    assert sum(_delta(after, before, "prompt_tokens").values()) == 740 * len(prompts)
    assert after["pin_misses"] == after["forward_errors"] == {"": 0.0}


def test_control_endpoint_needs_the_token_and_valid_knobs(live):
    deployment = live.deployment
    assert _put_knobs(deployment, {"router_temperature": 0.5}, token="wrong")[0] == 401
    code, body = _put_knobs(deployment, {"router_temperatur": 0.5})
    assert code == 400 and "router_temperatur" in body["error"]
    assert _put_knobs(deployment, {"prefill_load_scale": -1})[0] == 400
    code, body = _put_knobs(deployment, {"router_temperature": 0.25})
    assert code == 200 and body["router_temperature"] == 0.25
    assert (
        'poa_gym_router_knob{knob="router_temperature"} 0.25'
        in urllib.request.urlopen(deployment.control_url + "/metrics").read().decode()
    )
    _put_knobs(deployment, {"router_temperature": 0.0})


def test_temperature_spreads_a_repeated_prefix(live):
    """Temperature 5 over min-max-normalised costs gives every worker >= 0.2 of the picks, so 12
    repeats of one prefix all landing on one worker has probability < 1e-8 if the knob acts; at
    temperature 0 they all go to the worker that caches the prefix."""
    if not live.has_choice:
        pytest.skip("one prefill worker: nothing to spread over")
    spread = _workers_of_repeats(live.deployment, 901, {"router_temperature": 5.0})
    sticky = _workers_of_repeats(live.deployment, 902, {"router_temperature": 0.0})
    assert len(spread) > 1 and len(sticky) == 1, (spread, sticky)


def _workers_of_repeats(deployment: Deployment, group: int, knobs: dict) -> dict[str, float]:
    assert _put_knobs(deployment, knobs)[0] == 200
    try:
        before = _counts(deployment)
        for i in range(12):
            assert _send(deployment, [prompt_text(group, i, 640, 100)], concurrency=1)[0].ok
        return _delta(_counts(deployment), before, "requests")
    finally:
        _put_knobs(deployment, {"router_temperature": 0.0, "overlap_score_credit": 1.0})


def test_credit_zero_loses_the_prefix_cache(live):
    """16 prefixes x 2, one request at a time: with the credit at 1 every repeat finds its prefix
    (16 x 640 cached tokens); at 0 the router ignores the cache and idle workers tie, so a repeat
    lands on its prefix's worker by chance only: Binomial(16, 1/4) hits on agg, (16, 1/3) on
    3P/3D, so fewer than 0.7 x 16 with probability > 0.999; always on 1P/2D's single prefill
    worker, where the credit has nothing to choose."""
    deployment = live.deployment
    rates = {}
    for credit, base in ((1.0, 2000), (0.0, 3000)):
        assert _put_knobs(deployment, {"overlap_score_credit": credit})[0] == 200
        before = _counts(deployment)
        for i in range(2):
            prompts = [prompt_text(base + g, i, 640, 100) for g in range(16)]
            assert all(r.ok for r in _send(deployment, prompts, concurrency=1))
        after = _counts(deployment)
        cached = sum(_delta(after, before, "cached_tokens").values())
        rates[credit] = cached / sum(_delta(after, before, "prompt_tokens").values())
    _put_knobs(deployment, {"overlap_score_credit": 1.0})
    assert rates[1.0] == pytest.approx(16 * 640 / (32 * 740))
    if not live.has_choice:
        assert rates[0.0] == rates[1.0]
    else:
        assert rates[0.0] < 0.7 * rates[1.0], rates


def test_choices_match_dynamos_own_router(live):
    """The knob router's pricing (`envs.live.scoring`) against Dynamo's KvRouter with the same
    knobs in its config, on the same live state (`tests/live_oracle.py`)."""
    if not live.has_choice:
        pytest.skip("one prefill worker: every choice is the same")
    deployment = live.deployment
    env = dynamo_environment(Path(deployment.workdir))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("live_oracle.py")), deployment.workdir],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(hits == NUM_QUERIES for hits, _, _ in results.values()), results
    assert sum(unique for _, unique, _ in results.values()) >= 3 * NUM_QUERIES, results
    # Not vacuous: the control pricing (credit 0, scale 0) would have chosen otherwise this often.
    # The count depends on where Dynamo's unseeded tie-breaks put the warm prefixes: 19-33 over six
    # quiet runs on 3P/3D, 10 once under a full `make test`, so the bar is half the queries.
    assert sum(contrary for _, _, contrary in results.values()) >= NUM_QUERIES // 2, results


def _live_env(live: Live, **kwargs):
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env id)

    scenario, overrides = DEPLOYMENTS[live.name]
    return gym.make(
        "PoAGym/DisaggRouting-v0",
        scenario=scenario,
        overrides=overrides,
        backend="dynamo",
        live={"workdir": live.deployment.workdir},
        interval_s=4.0,  # 1 s of wall clock at the fixture's 4x speed-up
        warmup_s=8.0,
        schedules=[{"kind": "constant", "low": 16, "high": 16}],
        **kwargs,
    )


def _run_intervals(env, knobs: dict, num_intervals: int) -> tuple[list[np.ndarray], list[dict]]:
    from envs.sim.knobs import override_to_action

    base = env.unwrapped
    action = override_to_action({**base.default_values, **knobs}, base.knobs)
    steps = [env.step(action) for _ in range(num_intervals)]
    assert not any(info.get("ended") for *_, info in steps), steps[-1][-1]
    return [obs for obs, *_ in steps], [info for *_, info in steps]


def _cheapest_share(records) -> float:
    """Of the decisions where the workers' costs differed, the share that went to a cheapest
    worker (counted from the per-request worker ids and the costs the router saw)."""
    follows = [
        d.costs[d.candidates.index(d.chosen)] == min(d.costs)
        for r in records
        for d in r.decisions
        if max(d.costs) > min(d.costs)
    ]
    return sum(follows) / len(follows) if follows else float("nan")


def test_the_environment_drives_the_deployment_and_its_knobs_act(live):
    """Several control intervals of the environment on the deployment: observations from its
    /metrics, records joined to the knob router's decisions. On a multi-worker tier the credit
    moves the measured KV hit rate (64 prefix groups on agg, session histories on 3P/3D: too
    many to sit on every worker) and the temperature sends requests to workers other than the cheapest."""
    env = _live_env(live, num_intervals=12)
    try:
        _, info = env.reset(seed=3)
        hit = info["feature_names"].index("kv_hit_rate")
        phases = {}
        for name, knobs in (
            ("credit 0", {"overlap_score_credit": 0.0}),
            ("credit 1", {"overlap_score_credit": 1.0}),
            ("hot", {"overlap_score_credit": 1.0, "router_temperature": 1.0}),
        ):
            before = len(env.unwrapped.records)
            observations, infos = _run_intervals(env, knobs, 4)
            assert all(np.isfinite(o).all() for o in observations)
            assert sum(i["num_finished"] for i in infos) > 10 and not any(i["num_failed"] for i in infos)
            # PoA-hat over the knob router's decisions (3P/3D's simulated one is the decode stage's)
            assert all(np.isfinite(i["poa_hat"]) and i["poa_hat"] > 0 for i in infos), infos
            phases[name] = (np.mean([o[hit] for o in observations]), env.unwrapped.records[before:])
    finally:
        env.close()
    print(
        live.name,
        {k: (round(float(rate), 3), round(_cheapest_share(rs), 3)) for k, (rate, rs) in phases.items()},
    )
    if not live.has_choice:
        return
    assert phases["credit 0"][0] < 0.8 * phases["credit 1"][0], phases
    assert _cheapest_share(phases["credit 1"][1]) > 0.9 > 0.8 > _cheapest_share(phases["hot"][1]), phases


def test_a_model_the_deployment_does_not_serve_is_named(live):
    from envs.live.backend import LiveBackend, LiveConfig, Unreachable

    d = live.deployment
    config = LiveConfig(None, d.frontend_url, d.control_url, "no-such-model")
    with pytest.raises(Unreachable, match=f"does not serve model 'no-such-model'.*{d.model_name}"):
        LiveBackend(config)
