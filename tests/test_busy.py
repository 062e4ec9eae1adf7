"""Dynamo's busy thresholds: the rule by hand, `POST /busy_threshold`'s merge and checks, and in a
cluster the cap the threshold puts on booked prefill load, conservation of requests and of KV
blocks when a request is turned away, client retries, and the lever.

Oracles: hand-computed busy limits (strict comparisons, rules OR'd); a single prefill worker with
an absolute token threshold K and 128-token uncached prompts holds at most floor(K / 128) + 1
prompts booked at once; every request sent is finished, rejected or in flight, never two of
these; a rejected request frees every block it held; twin runs (the lever at the top of its
range is the run with no threshold, bit for bit); the busy check's arrivals, seed by seed, are
the live client's schedule (`open_loop_starts` of the seed's arrival stream).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from envs.disagg_env import DisaggRoutingEnv
from envs.levers import BUSY_LEVER, UNBOUNDED_FRAC
from envs.scenarios import load_scenario
from envs.schedules import ScheduleConfig
from envs.sim.busy import BusyThresholds
from envs.sim.config import EngineConfig, RouterConfig, ScenarioConfig, TopologyConfig, WorkloadConfig
from envs.sim.records import Stage
from envs.sim.run import build_cluster, random_streams
from envs.sim.workload import open_loop_starts
from eval.busy_check import compare, main, open_loop, with_seed


def test_each_rule_is_strict_and_any_one_makes_a_worker_busy():
    tokens = BusyThresholds(active_prefill_tokens_threshold=1000)
    assert not tokens.is_busy(1000, 0, 100, 8192) and tokens.is_busy(1001, 0, 100, 8192)
    frac = BusyThresholds(active_prefill_tokens_threshold_frac=0.5)  # 0.5 x 8192 = 4096
    assert not frac.is_busy(4096, 0, 100, 8192) and frac.is_busy(4097, 0, 100, 8192)
    decode = BusyThresholds(active_decode_blocks_threshold=0.8)  # 0.8 x 100 = 80 blocks
    assert not decode.is_busy(10**6, 80, 100, 8192) and decode.is_busy(0, 81, 100, 8192)
    both = BusyThresholds(0.8, 1000)
    assert both.is_busy(1001, 0, 100, 8192) and both.is_busy(0, 81, 100, 8192)
    assert not both.is_busy(1000, 80, 100, 8192)
    assert not BusyThresholds().enabled and not BusyThresholds().is_busy(10**9, 10**9, 1, 1)


def test_the_merge_keeps_unset_fields_and_checks_values_as_the_endpoint_does():
    start = BusyThresholds(active_decode_blocks_threshold=0.9)
    merged = start.merged(
        {"active_prefill_tokens_threshold_frac": 2.0, "active_decode_blocks_threshold": None}
    )
    assert merged == BusyThresholds(0.9, None, 2.0)  # a None leaves the field as it was
    assert start.merged({}) is start
    with pytest.raises(ValueError, match=r"active_decode_blocks_threshold is a fraction in \[0, 1\]"):
        start.merged({"active_decode_blocks_threshold": 1.5})
    with pytest.raises(ValueError, match="active_prefill_tokens_threshold_frac must be >= 0"):
        start.merged({"active_prefill_tokens_threshold_frac": -1.0})
    with pytest.raises(ValueError, match="must be a finite number"):
        start.merged({"active_prefill_tokens_threshold_frac": math.nan})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['busy'\]"):
        start.merged({"busy": 1.0})


def single_prefill(
    router: RouterConfig, num_requests: int | None = 400, duration_s: float | None = None, **workload
) -> ScenarioConfig:
    return ScenarioConfig(
        seed=5,
        duration_s=duration_s,
        topology=TopologyConfig(mode="disagg", num_prefill_workers=1, num_decode_workers=2),
        engine=EngineConfig(block_size=16, num_gpu_blocks=4096, max_num_batched_tokens=1024),
        router=router,
        workload=WorkloadConfig(
            **{
                "rate_rps": 400.0,
                "num_requests": num_requests,
                "isl_tokens": 128,
                "osl_tokens": 4,
                **workload,
            }
        ),
    )


def max_booked(records) -> int:
    """The most prompts booked on the prefill worker at once: from routing to prefill's end."""
    events = sorted(
        [(r.decisions[0].time_s, 1) for r in records] + [(r.prefill_end_s, -1) for r in records],
        key=lambda e: (e[0], e[1]),  # a release at the same instant comes first
    )
    level = peak = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


def test_a_token_threshold_caps_the_prompts_booked_on_the_worker():
    cluster = build_cluster(single_prefill(RouterConfig(active_prefill_tokens_threshold=1000)))
    cluster.env.run()
    assert max_booked(cluster.records) == 1000 // 128 + 1  # 8: the one admitted at 896 tokens
    assert len(cluster.rejections) > 50 and {r.stage for r in cluster.rejections} == {Stage.PREFILL}
    sent = {r.request_id for r in cluster.records} | {r.request_id for r in cluster.rejections}
    assert len(sent) == cluster.num_dispatched == len(cluster.records) + len(cluster.rejections)
    assert cluster.num_in_flight == 0
    free = build_cluster(single_prefill(RouterConfig()))
    free.env.run()
    assert max_booked(free.records) > 8 and not free.rejections  # the open loop overloads it


def test_a_decode_pool_that_is_all_busy_turns_requests_away_after_prefill_and_frees_their_blocks():
    # 0.05 x 4096 = 204 blocks: long decodes fill a decode worker past it, a prefill worker
    # (which lets go of a prompt once it has moved) stays below.
    router = RouterConfig(active_decode_blocks_threshold=0.05)
    cluster = build_cluster(single_prefill(router, osl_tokens=200))
    cluster.env.run()
    stages = {r.stage for r in cluster.rejections}
    assert stages == {Stage.DECODE} and len(cluster.rejections) > 20 and cluster.records
    assert all(engine.pool.num_active == 0 for engine in cluster.engines)  # no block leaks
    assert cluster.num_dispatched == len(cluster.records) + len(cluster.rejections)


def test_a_turned_away_client_retries_after_retry_after_s():
    scenario = single_prefill(
        RouterConfig(active_prefill_tokens_threshold=300),
        num_requests=None,
        arrival="closed_loop",
        concurrency=24,
        retry_after_s=0.25,
        duration_s=5.0,
    )
    cluster = build_cluster(scenario)
    cluster.env.run()
    assert len(cluster.rejections) > 20 and cluster.num_in_flight == 0
    sent = {(r.session_id, r.turn, r.decisions[0].time_s) for r in cluster.records}  # no queue
    sent |= {(r.session_id, r.turn, r.time_s) for r in cluster.rejections}
    # Every turned-away request is sent again exactly retry_after_s later, while the run accepts.
    for r in cluster.rejections:
        if r.time_s + 0.25 < 5.0:
            assert (r.session_id, r.turn, r.time_s + 0.25) in sent
    # A request served on a retry counts from its first try: TTFT is what its client waited.
    first_try: dict[tuple[int, int], float] = {}
    for r in cluster.rejections:
        first_try.setdefault((r.session_id, r.turn), r.time_s)
    retried = [r for r in cluster.records if (r.session_id, r.turn) in first_try]
    assert retried and all(r.arrival_s == first_try[(r.session_id, r.turn)] for r in retried)
    assert all(r.decisions[0].time_s >= r.arrival_s + 0.25 for r in retried)


def lever_env(knobs: list) -> DisaggRoutingEnv:
    return DisaggRoutingEnv(
        scenario="llama70b-b200-1p5d",
        num_intervals=4,
        schedule=ScheduleConfig(kind="constant", low=384, high=384),
        knobs=knobs,
    )


def episode(env: DisaggRoutingEnv, action: np.ndarray) -> tuple[list, list]:
    env.reset(seed=3)
    infos = [env.step(action)[4] for _ in range(4)]
    return list(env.records), infos


def test_the_busy_lever_sheds_load_and_its_top_is_no_threshold():
    base = [["overlap_score_weight", 0, 2], ["router_temperature", 0, 1]]
    plain_records, plain_infos = episode(lever_env(base), np.array([0.0, -1.0], np.float32))
    lever = lever_env([*base, [BUSY_LEVER, 0.5, 8.0]])
    off_records, off_infos = episode(lever, np.array([0.0, -1.0, 1.0], np.float32))
    assert off_records == plain_records  # the top of the range is no shedding, bit for bit
    assert lever._cluster.busy_thresholds.active_prefill_tokens_threshold_frac == UNBOUNDED_FRAC
    assert all(info["num_rejected"] == 0 for info in off_infos) and "num_rejected" not in plain_infos[0]
    _, shed_infos = episode(lever, np.array([0.0, -1.0, -1.0], np.float32))  # frac 0.5
    assert sum(info["num_rejected"] for info in shed_infos) > 100
    # More than 1% of the requests waited retry_after_s (1 s) and tried again: TTFT, counted from
    # the first try, has a P99 past that wait.
    assert shed_infos[-1]["ttft_p99_s"] > 1.0 > plain_infos[-1]["ttft_p99_s"]


def test_the_busy_lever_is_refused_where_dynamo_has_no_busy_threshold():
    with pytest.raises(ValueError, match="router mode 'llm_d' has none"):
        DisaggRoutingEnv(
            scenario="llama70b-b200-1p5d",
            overrides=("router.mode=llm_d",),
            knobs=[["overlap_score_weight", 0, 2], [BUSY_LEVER, 0.5, 8.0]],
        )


def first_tries(scenario: ScenarioConfig) -> list[float]:
    """Each session's first send in the simulator, in order."""
    cluster = build_cluster(scenario)
    cluster.env.run()
    first: dict[int, float] = {}
    for session, time_s in [(r.session_id, r.arrival_s) for r in cluster.records] + [
        (r.session_id, r.time_s) for r in cluster.rejections
    ]:
        first[session] = min(first.get(session, math.inf), time_s)
    return sorted(first.values())


def test_the_busy_check_sends_each_seeds_arrivals_to_both_sides_and_averages_over_seeds(tmp_path):
    scenario, _ = load_scenario("agg-4w-prefix", ["router.active_prefill_tokens_threshold_frac=0.25"])
    scenario = open_loop(scenario, 60.0, 5.0)
    for seed in (0, 1):  # the simulator's first tries are the live client's schedule for the seed
        seeded = with_seed(scenario, seed)
        starts = open_loop_starts(seeded.workload, random_streams(seed)["arrivals"])
        schedule = list(itertools.takewhile(lambda t: t < 5.0, starts))
        assert first_tries(seeded) == schedule and 250 < len(schedule) < 350
    comparison = compare(scenario, None, [0, 1])
    sims = [pair.sim for pair in comparison.pairs]
    assert [pair.seed for pair in comparison.pairs] == [0, 1] and sims[0] != sims[1]
    assert comparison.sim_share_mean == pytest.approx(np.mean([s.rejected_share for s in sims]))
    assert comparison.sim_completed_mean == np.mean([s.num_completed for s in sims])
    assert all(pair.real is None for pair in comparison.pairs) and math.isnan(comparison.share_ratio)
    path = tmp_path / "busy.json"
    assert main(["--sim-only", "--seeds", "2", "--duration-s", "5", "--json", str(path)]) == 0
    [saved] = json.loads(path.read_text())
    assert saved["frac"] == 0.25 and saved["sim_share_mean"] == comparison.sim_share_mean


def test_the_busy_check_names_an_unknown_scenario_without_a_traceback(capsys):
    assert main(["no-such-preset", "--sim-only"]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'no-such-preset'" in err and "Traceback" not in err
