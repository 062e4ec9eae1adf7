"""Router policy classes on a real Dynamo 1.6.1 frontend (`--layout dynamo`): the scenario's
`router.policy_config` reaches the frontend as `--router-policy-config`, and the live clients name
each request's class in Dynamo's header, as the simulator's sessions name it.

Oracles: the frontend's own per-class admission counters
(`dynamo_frontend_router_admission_received_total{policy_class=...}`) against the classes the
clients' sessions drew (the simulator's class stream, `envs.sim.run.policy_class_rng`): every
request of an `interactive` session lands in the explicit class `interactive`, every other one in
the default family's `std-all`; and every request is served.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from envs.live.deploy import down, dynamo_installed, up
from envs.live.loadgen import ClosedLoopClients, session_stream
from envs.scenarios import load_scenario
from envs.sim.policy_config import RouterPolicyConfig
from envs.sim.run import policy_class_rng, random_streams
from envs.sim.workload import Session, SyntheticSessions

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not dynamo_installed(), reason="ai-dynamo not installed (run `make dynamo`)"),
]

SPEEDUP = 4.0
NUM_CLIENTS = 8
POLICY = {
    "default_policy_family": "standard",
    "uncached_isl_buckets": [{"min_tokens": 0, "bucket": "all"}],
    "policy_classes": [
        {"name": "std-all", "policy_family": "standard", "cache_bucket": "all", "quantum": 4096},
        {"name": "interactive", "quantum": 8192, "prefill_busy_threshold_frac": 0.5},
    ],
}
RECEIVED = "dynamo_frontend_router_admission_received_total"


def scenario():
    config, _ = load_scenario("agg-4w-prefix", ["workload.policy_class_mix={interactive: 0.5}"])
    policy = TypeAdapter(RouterPolicyConfig).validate_python(POLICY)
    return dataclasses.replace(config, router=dataclasses.replace(config.router, policy_config=policy))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("policy")
    deployment = up(scenario(), workdir, layout="dynamo", speedup=SPEEDUP, timeout_s=120)
    try:
        yield deployment
    finally:
        down(workdir)


def received_by_class(deployment) -> dict[str, float]:
    with urllib.request.urlopen(deployment.frontend_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == RECEIVED and sample.labels.get("model") == deployment.model_name:
                counts[sample.labels["policy_class"]] = sample.value
    return counts


def test_each_request_lands_in_the_class_its_session_names(deployment):
    config = scenario()
    block_tokens = config.engine.block_size
    generator = SyntheticSessions(
        config.workload, block_tokens, random_streams(config.seed)["sessions"], policy_class_rng(config.seed)
    )
    classes: dict[int, str | None] = {}

    def session(session_id: int, start_s: float) -> Session:
        made = generator.session(session_id, start_s)
        classes[session_id] = made.turns[0].policy_class
        return made

    before = received_by_class(deployment)
    clients = ClosedLoopClients(
        deployment.frontend_url, deployment.model_name, session_stream(session), block_tokens, SPEEDUP
    )
    clients.set_clients(NUM_CLIENTS)
    try:
        time.sleep(3.0)
        clients.set_clients(0)
        deadline = time.monotonic() + 30.0
        while clients.num_in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        clients.close()
    done = clients.take()
    assert len(done) > 20 and all(c.ok for c in done), [c.error for c in done if not c.ok][:3]
    interactive = sum(classes[c.session_id] == "interactive" for c in done)
    assert 0 < interactive < len(done)  # both kinds were sent
    after = received_by_class(deployment)
    landed = {name: after.get(name, 0) - before.get(name, 0) for name in ("interactive", "std-all")}
    print(f"\nsent {len(done)}, {interactive} interactive; the frontend's classes: {landed}")
    assert landed == {"interactive": interactive, "std-all": len(done) - interactive}
