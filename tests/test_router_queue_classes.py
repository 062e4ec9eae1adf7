"""Dynamo's router policy classes (`--router-policy-config`): the file's rules, classification,
deficit round robin across class queues, per-class busy thresholds and queue caps.

Oracles: DRR service orders computed by hand from Dynamo's `pop_next` (worked in each test);
Dynamo's own validation messages; in a cluster, a class with a threshold waits while one
without never does, only the capped class is turned away, and every request sent is served or
turned away exactly once. The reference run (Dynamo's replay) is `poa-gym crosscheck --grid
classes`.
"""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import TypeAdapter, ValidationError

from envs.sim.config import EngineConfig, RouterConfig, ScenarioConfig, TopologyConfig, WorkloadConfig
from envs.sim.policy_config import PolicyProfile, RouterPolicyConfig
from envs.sim.policy_queue import PolicyRouterQueue
from envs.sim.router import WorkerLoad
from envs.sim.router_queue import QueueEntry
from envs.sim.run import build_cluster, materialize_sessions

POLICY = TypeAdapter(RouterPolicyConfig)


def cls(name: str, family: str | None, bucket: str | None, quantum: int, **kw) -> dict:
    fields = {"name": name, "quantum": quantum, "policy_family": family, "cache_bucket": bucket}
    return {k: v for k, v in fields.items() if v is not None} | kw


def profile(*classes: dict, buckets=((0, "all"),), default: str = "a") -> PolicyProfile:
    document = {
        "default_policy_family": default,
        "uncached_isl_buckets": [{"min_tokens": m, "bucket": b} for m, b in buckets],
        "policy_classes": list(classes),
    }
    root = POLICY.validate_python(document).root
    assert root is not None
    return root


def idle(n: int = 1) -> list[WorkerLoad]:
    return [WorkerLoad() for _ in range(n)]


def busy(tokens: int, n: int = 1) -> list[WorkerLoad]:
    return [WorkerLoad(active_prefill_tokens=tokens) for _ in range(n)]


def fill(queue: PolicyRouterQueue[str], *requests: tuple[str, str, int]) -> None:
    """Queue (name, requested class, uncached tokens) while every worker is busy."""
    for key, (name, requested, tokens) in enumerate(requests):
        entry = QueueEntry(key, float(key), tokens, lambda t=tokens: t, requested)
        assert queue.offer(name, entry, busy(10**6)) == "queued"


def drain(queue: PolicyRouterQueue[str], loads: list[WorkerLoad]) -> list[str]:
    out = []
    while (name := queue.pop_ready(loads)) is not None:
        out.append(name)
    return out


def two_classes(quantum_a: int, quantum_b: int, **kw) -> PolicyProfile:
    return profile(
        cls("a", "a", "all", quantum_a, prefill_busy_threshold=0, **kw),
        cls("b", "b", "all", quantum_b, prefill_busy_threshold=0),
    )


def test_drr_serves_classes_in_proportion_to_their_quanta():
    queue: PolicyRouterQueue[str] = PolicyRouterQueue(two_classes(300, 100), 1000)
    fill(queue, *[(f"a{i}", "a", 100) for i in (1, 2, 3, 4)], *[(f"b{i}", "b", 100) for i in (1, 2, 3)])
    # By hand: a gets 300 and serves a1 (credit 200 left, carried), a2 (100), a3 (0, no carry);
    # the ring goes on at b: +100 serves b1; back at a: +300 serves a4 (a empties, credit
    # dropped); b: b2; a is empty, so b: b3.
    assert drain(queue, idle()) == ["a1", "a2", "a3", "b1", "a4", "b2", "b3"]
    assert len(queue) == 0 and queue.served_order == ["a", "a", "a", "b", "a", "b", "b"]


def test_drr_fast_forwards_whole_rounds_for_a_head_larger_than_its_quantum():
    queue: PolicyRouterQueue[str] = PolicyRouterQueue(two_classes(100, 50), 1000)
    fill(queue, ("a-long", "a", 450), ("b-mid", "b", 120), ("b-short", "b", 10))
    # Ring pass: a 0+100 < 450, b 0+50 < 120. Fewest whole rounds for a head to fit:
    # a ceil(350/100) = 4, b ceil(70/50) = 2 -> 2 rounds: a 300, b 150; b-mid fits (b keeps 30,
    # carried): b-short 10 <= 30. Then a: 300+100 < 450; 1 more round -> a-long.
    assert drain(queue, idle()) == ["b-mid", "b-short", "a-long"]


def test_a_class_whose_workers_are_busy_by_its_threshold_waits_while_another_goes():
    queue: PolicyRouterQueue[str] = PolicyRouterQueue(
        profile(
            cls("a", "a", "all", 1000, prefill_busy_threshold=100),
            cls("b", "b", "all", 1000, prefill_busy_threshold_frac=0.5),  # busy past 500 tokens
        ),
        1000,
    )
    fill(queue, ("a1", "a", 10), ("b1", "b", 10), ("a2", "a", 10), ("b2", "b", 10))
    assert drain(queue, busy(300, n=2)) == ["b1", "b2"]  # 300 > 100 for a, not > 500 for b
    assert drain(queue, busy(100, n=2)) == ["a1", "a2"]  # 100 is not > 100


def test_requests_are_classified_by_family_and_uncached_bucket_or_by_explicit_name():
    p = profile(
        cls("std-short", "std", "short", 1),
        cls("std-long", "std", "long", 1),
        cls("lat-short", "lat", "short", 1),
        cls("lat-long", "lat", "long", 1),
        cls("vip", None, None, 1),
        buckets=((0, "short"), (1024, "long")),
        default="std",
    )
    names = [c.name for c in p.policy_classes]
    assert names[p.class_index("lat", 1023)] == "lat-short"
    assert names[p.class_index("lat", 1024)] == "lat-long"
    assert names[p.class_index(None, 5000)] == "std-long"  # no name: the default family
    assert names[p.class_index("unknown", 0)] == "std-short"  # unknown: the default family
    assert names[p.class_index("std-long", 0)] == "std-short"  # a family class is not a name
    assert names[p.class_index("vip", 10**6)] == "vip"
    assert not p.needs_cache_state("vip") and p.needs_cache_state("lat")


def test_a_queue_cap_turns_away_only_its_class_and_counts_before_adding():
    queue: PolicyRouterQueue[str] = PolicyRouterQueue(
        two_classes(10, 10, request_queue_limit_per_worker=1), 1000
    )
    full = busy(1, n=2)  # two workers: class a holds up to 1 x 2 requests
    verdicts = [
        queue.offer(name, QueueEntry(k, 0.0, 50, lambda: 50, name[0]), full)
        for k, name in enumerate(["a1", "b1", "a2", "b2", "a3", "b3"])
    ]
    assert verdicts == ["queued", "queued", "queued", "queued", "rejected", "queued"]
    assert queue.rejected_by_class == Counter({"a": 1})


def test_a_class_without_a_threshold_never_queues():
    queue: PolicyRouterQueue[str] = PolicyRouterQueue(profile(cls("a", "a", "all", 1)), 1000)
    assert queue.offer("x", QueueEntry(0, 0.0, 50, lambda: 50), busy(10**6)) == "route"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default_policy_family": "nope"}, "default_policy_family 'nope' does not name a configured family"),
        ({"uncached_isl_buckets": [{"min_tokens": 5, "bucket": "all"}]}, "must start at min_tokens 0"),
        ({"policy_classes": [cls("x", "a", "all", 0)]}, "greater than 0"),
        ({"policy_classes": [cls("x y", "a", "all", 1)]}, "must match [A-Za-z0-9_.-]+"),
        ({"policy_classes": [cls("x", "a", None, 1)]}, "both policy_family and cache_bucket or neither"),
        ({"policy_classes": [cls("x", "a", "other", 1)]}, "references unknown cache bucket 'other'"),
        ({"policy_classes": [cls("x", "a", "all", 1), cls("y", "a", "all", 1)]}, "duplicate policy classes"),
        (
            {"policy_classes": [cls("x", "a", "all", 1), cls("a", None, None, 1)]},
            "collides with a policy family",
        ),
        ({"policy_classes": [cls("x", "a", "all", 1, queue_policy="lcfs")]}, "'fcfs' or 'wspt'"),
        ({"uncached_isl_buckets": None}, "root profile must specify default_policy_family"),
        ({"worker_selection": {"aggregated": "x"}}, "worker_selection: plugin worker selectors"),
    ],
)
def test_the_file_is_validated_with_dynamos_rules(change, message):
    document = {
        "default_policy_family": "a",
        "uncached_isl_buckets": [{"min_tokens": 0, "bucket": "all"}],
        "policy_classes": [cls("x", "a", "all", 1)],
    }
    document.update(change)
    document = {k: v for k, v in document.items() if v is not None}
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        POLICY.validate_python(document)


def test_a_missing_family_bucket_cell_is_named():
    with pytest.raises(ValidationError, match="missing a policy class for family 'b' and bucket 'long'"):
        profile(
            cls("a-s", "a", "short", 1),
            cls("a-l", "a", "long", 1),
            cls("b-s", "b", "short", 1),
            buckets=((0, "short"), (100, "long")),
        )


def classes_scenario(**class_fields: dict) -> ScenarioConfig:
    document = {
        "default_policy_family": "batch",
        "uncached_isl_buckets": [{"min_tokens": 0, "bucket": "all"}],
        "policy_classes": [
            cls(family, family, "all", 1024, **fields) for family, fields in class_fields.items()
        ],
    }
    return ScenarioConfig(
        seed=5,
        topology=TopologyConfig(mode="agg", num_workers=2),
        engine=EngineConfig(block_size=16, num_gpu_blocks=4096, max_num_batched_tokens=1024),
        router=RouterConfig(policy_config=POLICY.validate_python(document)),
        workload=WorkloadConfig(
            rate_rps=60.0,
            num_requests=300,
            isl_tokens=700,
            osl_tokens=8,
            isl_jitter=0.5,
            policy_class_mix={"interactive": 0.4},
        ),
    )


def test_only_the_class_with_a_busy_threshold_waits_in_the_router():
    scenario = classes_scenario(interactive={}, batch={"prefill_busy_threshold_frac": 0.0})
    cluster = build_cluster(scenario)
    cluster.env.run()
    queue = cluster.router_queue
    assert isinstance(queue, PolicyRouterQueue)
    waited = Counter(
        queue.class_of[r.request_id] for r in cluster.records if r.decisions[0].time_s > r.arrival_s
    )
    assert waited["interactive"] == 0 and waited["batch"] > 20
    assert sorted(r.request_id for r in cluster.records) == list(range(300))  # each exactly once
    # The classes are the workload's own draw: about 40% of the sessions name `interactive`.
    named = Counter(t.policy_class for s in materialize_sessions(scenario, 16) for t in s.turns)
    assert Counter(queue.class_of.values()) == Counter(
        {"interactive": named["interactive"], "batch": named[None]}
    )
    assert 0.3 < named["interactive"] / 300 < 0.5


def test_a_capped_class_alone_is_turned_away_and_every_request_ends_once():
    scenario = classes_scenario(
        interactive={"prefill_busy_threshold_frac": 0.0},
        batch={"prefill_busy_threshold_frac": 0.0, "request_queue_limit_per_worker": 1},
    )
    cluster = build_cluster(scenario)
    cluster.env.run()
    queue = cluster.router_queue
    assert isinstance(queue, PolicyRouterQueue)
    rejected = Counter(queue.class_of[r.request_id] for r in cluster.rejections)
    assert rejected["batch"] > 0 and rejected["interactive"] == 0
    assert rejected == queue.rejected_by_class
    served = [r.request_id for r in cluster.records]
    turned_away = [r.request_id for r in cluster.rejections]
    # Conservation: each request sent is served or turned away, exactly once; a turned-away turn
    # is sent again (as a new request) while the workload runs, and is served at most once.
    assert sorted(served + turned_away) == list(range(cluster.num_dispatched))
    turns_served = Counter((r.session_id, r.turn) for r in cluster.records)
    assert set(turns_served.values()) == {1}
    assert {(r.session_id, r.turn) for r in cluster.rejections} & set(turns_served)  # retries served
    assert len(queue) == 0
