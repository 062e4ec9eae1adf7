"""The sidecar's decision latency: `poa-gym bench --sidecar`.

The snapshots are the simulator's own, one per control interval of a closed-loop run of the
scenario, rendered to Prometheus text as a frontend exposes them, so the timed path is the
sidecar's: parse the text (`envs.live.snapshot`), build the observation, run the policy. Two
latencies per interval: the decision (observation + inference, what the sidecar's
`poa_gym_sidecar_decision_seconds` histogram records) and the whole path with the parse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from agents.sidecar.decider import Decider, DeciderConfig
from agents.sidecar.policies import DYNAMO_DEFAULT_KNOBS, load_policy
from envs.live.ledger import RoutingLedger
from envs.live.snapshot import live_snapshot
from envs.prometheus import render_snapshot
from envs.scenarios import load_scenario
from envs.sim.run import build_cluster
from envs.sim_metrics import SimMetrics

MODEL = "bench-model"


@dataclass(frozen=True, slots=True)
class DecisionBench:
    policy: str
    num_decisions: int
    decision_p50_ms: float
    decision_p99_ms: float
    decision_max_ms: float
    path_p50_ms: float  # parse + decision
    path_p99_ms: float


def exposition_texts(scenario_name: str, num_intervals: int, interval_s: float) -> list[str]:
    """The frontend's /metrics text at the end of each interval of a closed-loop simulation."""
    scenario, _ = load_scenario(
        scenario_name,
        [
            "workload.arrival=closed_loop",
            "workload.concurrency=128",
            f"duration_s={num_intervals * interval_s}",
        ],
    )
    cluster = build_cluster(scenario)
    metrics = SimMetrics(cluster)
    texts = []
    for i in range(1, num_intervals + 1):
        cluster.env.run(until=i * interval_s)
        texts.append(render_snapshot(metrics.snapshot(), MODEL))
    return texts


def bench_decisions(
    policy_spec: str, scenario_name: str = "llama70b-b200-3p3d-multiturn", num_intervals: int = 400
) -> DecisionBench:
    decider = Decider(load_policy(policy_spec, DYNAMO_DEFAULT_KNOBS), DeciderConfig(DYNAMO_DEFAULT_KNOBS))
    texts = exposition_texts(scenario_name, num_intervals, interval_s=2.0)
    router_text = RoutingLedger(DYNAMO_DEFAULT_KNOBS).metrics_text().decode()
    decision_s, path_s = [], []
    for i, text in enumerate(texts):
        start_s = time.perf_counter()
        snapshot = live_snapshot(text, router_text, MODEL, 2.0 * (i + 1), 1.0)
        decision = decider.observe(snapshot)
        elapsed_s = time.perf_counter() - start_s
        if decision.decision_s is not None:
            decision_s.append(decision.decision_s)
            path_s.append(elapsed_s)
    if not decision_s:
        raise RuntimeError(f"{policy_spec}: the policy never decided (faults: {decider.faults})")
    d_ms, p_ms = np.asarray(decision_s) * 1e3, np.asarray(path_s) * 1e3
    return DecisionBench(
        decider.policy.name,
        len(decision_s),
        float(np.percentile(d_ms, 50)),
        float(np.percentile(d_ms, 99)),
        float(d_ms.max()),
        float(np.percentile(p_ms, 50)),
        float(np.percentile(p_ms, 99)),
    )
