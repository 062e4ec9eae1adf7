"""Dynamo's router queue: the busy rule and the three orders by hand, and in a cluster the
anti-bypass rule, conservation of requests and routing at dequeue time.

Oracles: hand-computed busy limits (threshold x max_num_batched_tokens) and orders; every
request finishes exactly once; a queued request's decision is later than its arrival and no
request waits while nothing is booked. The reference system (Dynamo's replay) is in
tests/test_dynamo_crosscheck.py.
"""

from __future__ import annotations

import pytest

from envs.sim.config import EngineConfig, RouterConfig, ScenarioConfig, TopologyConfig, WorkloadConfig
from envs.sim.router import WorkerLoad
from envs.sim.router_queue import RouterQueue
from envs.sim.run import build_cluster


def loads(*prefill_tokens: int) -> list[WorkerLoad]:
    return [WorkerLoad(active_prefill_tokens=tokens) for tokens in prefill_tokens]


def test_a_worker_is_busy_past_threshold_times_its_token_budget():
    queue: RouterQueue[str] = RouterQueue(0.5, "fcfs", 1000)  # busy past 500 tokens
    assert not queue.all_busy(loads(500, 1001))  # 500 is not > 500
    assert queue.all_busy(loads(501, 1001))
    assert not queue.all_busy(loads(501, 400))
    assert not queue.should_queue(loads(0, 0))
    queue.push("a", 0.0, 10)
    assert queue.should_queue(loads(0, 0))  # a backlog: no request jumps it
    assert queue.pop_ready(loads(501, 1001)) is None  # everyone busy: nothing leaves
    assert queue.pop_ready(loads(0, 0)) == "a" and len(queue) == 0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("fcfs", ["early", "mid-long", "mid-short", "late"]),  # ties at 1.0 keep enqueue order
        ("lcfs", ["late", "mid-long", "mid-short", "early"]),
        ("wspt", ["mid-short", "late", "early", "mid-long"]),  # 1/100, 1/300, 1/500, 1/900
    ],
)
def test_each_policy_orders_by_its_score(policy, expected):
    queue: RouterQueue[str] = RouterQueue(0.0, policy, 100)
    for name, arrival_s, uncached in [
        ("early", 0.0, 500),
        ("mid-long", 1.0, 900),
        ("mid-short", 1.0, 100),
        ("late", 2.0, 300),
    ]:
        queue.push(name, arrival_s, uncached)
    assert [queue.pop_ready(loads(0)) for _ in range(4)] == expected


def test_wspt_treats_a_fully_cached_prompt_as_one_token():
    queue: RouterQueue[str] = RouterQueue(0.0, "wspt", 100)
    queue.push("one", 0.0, 1)
    queue.push("cached", 1.0, 0)  # max(1, 0) = 1: ties with "one", which was enqueued first
    assert [queue.pop_ready(loads(0)), queue.pop_ready(loads(0))] == ["one", "cached"]


def scenario(threshold: float | None, policy: str = "fcfs") -> ScenarioConfig:
    return ScenarioConfig(
        seed=3,
        topology=TopologyConfig(mode="agg", num_workers=2),
        engine=EngineConfig(block_size=16, num_gpu_blocks=4096, max_num_batched_tokens=1024),
        router=RouterConfig(router_queue_threshold=threshold, router_queue_policy=policy),
        workload=WorkloadConfig(
            rate_rps=60.0, num_requests=240, isl_tokens=700, osl_tokens=8, isl_jitter=0.5
        ),
    )


@pytest.mark.parametrize("policy", ["fcfs", "wspt", "lcfs"])
def test_the_queue_conserves_requests_and_routes_at_dequeue(policy):
    cluster = build_cluster(scenario(0.5, policy))  # busy past 512 active prefill tokens
    cluster.env.run()
    records = cluster.records
    assert sorted(r.request_id for r in records) == list(range(240))  # each exactly once
    waited = [r for r in records if r.decisions[0].time_s > r.arrival_s]
    assert cluster.router_queue is not None and len(cluster.router_queue) == 0
    assert len(waited) == cluster.router_queue.num_queued_total > 20  # the queue did act
    assert all(r.decisions[0].time_s >= r.arrival_s for r in records)
    assert all(r.first_token_s >= r.decisions[0].time_s for r in records)


def test_without_a_threshold_nothing_waits_in_the_router():
    cluster = build_cluster(scenario(None))
    cluster.env.run()
    assert cluster.router_queue is None
    assert all(r.decisions[0].time_s == r.arrival_s for r in cluster.records)


def test_wspt_cuts_median_ttft_and_raises_the_tail_under_overload():
    """Smith's rule serves short prompts first: the median falls, the longest prompts wait."""
    from envs.sim.metrics import summarize

    fcfs, wspt = (build_cluster(scenario(0.0, policy)) for policy in ("fcfs", "wspt"))
    for cluster in (fcfs, wspt):
        cluster.env.run()
    a, b = summarize(fcfs.records), summarize(wspt.records)
    assert b.ttft_p50_s < a.ttft_p50_s and b.ttft_p99_s > a.ttft_p99_s
