"""Busy thresholds, simulator against Dynamo: the same scenario, closed-loop clients and run length
through our simulator and through a plain Dynamo deployment (`poa-gym dynamo up --layout dynamo`),
whose frontend applies the thresholds itself (startup flags, or `POST /busy_threshold`).

Dynamo's replay has no busy thresholds (it takes a `KvRouterConfig`, and they live in the
frontend's worker monitor), so the reference is the real frontend with mocker workers. Both sides
send a turned-away request again after `workload.retry_after_s`. Compared: the share of requests
turned away and the requests completed. The mean TTFTs differ in kind under shedding: the
simulator's counts from a request's first try, Dynamo's own (`nvext.timing`) from the try served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.live.deploy import Deployment
from envs.live.loadgen import ClosedLoopClients, LiveCompletion, send_turn, session_stream
from envs.sim.config import ScenarioConfig
from envs.sim.metrics import summarize
from envs.sim.run import build_cluster, policy_class_rng, random_streams
from envs.sim.workload import SyntheticSessions, open_loop_starts


@dataclass(frozen=True, slots=True)
class BusyOutcome:
    """One side's run: requests completed and turned away, and the completed ones' mean TTFT."""

    num_completed: int
    num_rejected: int
    duration_s: float
    ttft_mean_s: float

    @property
    def rejected_share(self) -> float:
        sent = self.num_completed + self.num_rejected
        return self.num_rejected / sent if sent else float("nan")

    @property
    def throughput_rps(self) -> float:
        return self.num_completed / self.duration_s


def open_loop(scenario: ScenarioConfig, rate_rps: float, duration_s: float) -> ScenarioConfig:
    """The scenario as Poisson arrivals at `rate_rps` for `duration_s`, one turn a session."""
    workload = dataclasses.replace(
        scenario.workload, arrival="poisson", rate_rps=rate_rps, concurrency=None, num_requests=None,
        turns_per_session=1,
    )  # fmt: skip
    return dataclasses.replace(scenario, workload=workload, duration_s=duration_s)


def simulated(scenario: ScenarioConfig) -> BusyOutcome:
    cluster = build_cluster(scenario)
    cluster.env.run()
    duration_s = float(scenario.duration_s or cluster.env.now)
    finished = [r for r in cluster.records if r.arrival_s < duration_s]
    ttft = summarize(finished).ttft_mean_s
    return BusyOutcome(len(finished), len(cluster.rejections), duration_s, ttft)


def live(scenario: ScenarioConfig, deployment: Deployment) -> BusyOutcome:
    """Run the scenario's clients against the deployment for its duration (scenario seconds,
    compressed by the deployment's speed-up); requests in flight at the end are let finish."""
    if deployment.layout != "dynamo":
        raise ValueError(
            f"{deployment.workdir}: busy thresholds act at Dynamo's frontend; start the deployment "
            "with --layout dynamo"
        )
    set_busy_thresholds(deployment, scenario)
    block_tokens = scenario.engine_for("prefill" if scenario.topology.mode == "disagg" else "agg").block_size
    streams = random_streams(scenario.seed)
    generator = SyntheticSessions(
        scenario.workload, block_tokens, streams["sessions"], policy_class_rng(scenario.seed)
    )
    assert scenario.duration_s is not None
    if scenario.workload.concurrency is None:
        done = asyncio.run(_open_loop(scenario, deployment, generator, streams["arrivals"], block_tokens))
        return _outcome(done, scenario.duration_s)
    clients = ClosedLoopClients(
        deployment.frontend_url,
        deployment.model_name,
        session_stream(generator.session),
        block_tokens,
        deployment.speedup,
        retry_after_s=scenario.workload.retry_after_s,
    )
    clients.set_clients(scenario.workload.concurrency)
    time.sleep(scenario.duration_s / deployment.speedup)
    clients.set_clients(0)
    clients.close(grace_s=30.0)
    return _outcome(clients.take(), scenario.duration_s)


async def _open_loop(
    scenario: ScenarioConfig, deployment: Deployment, generator: Any, arrivals: Any, block_tokens: int
) -> list[LiveCompletion]:
    """The simulator's open loop on the wall clock: the same session start times (the scenario
    seed's `arrivals` stream), each turn sent again `retry_after_s` after a 529, until the end."""
    import aiohttp

    speedup, end_s = deployment.speedup, float(scenario.duration_s or 0.0)
    retry_s = scenario.workload.retry_after_s
    request = (deployment.frontend_url + "/v1/completions", deployment.model_name, block_tokens)
    done: list[LiveCompletion] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        t0 = time.monotonic()

        async def session(index: int, start_s: float) -> None:
            turn = generator.session(index, start_s).turns[0]
            while True:
                completion = await send_turn(http, request, index, 0, turn)
                done.append(completion)
                if not completion.rejected or (time.monotonic() - t0) * speedup + retry_s >= end_s:
                    return
                await asyncio.sleep(retry_s / speedup)

        tasks = []
        for index, start_s in enumerate(open_loop_starts(scenario.workload, arrivals)):
            if start_s >= end_s:
                break
            await asyncio.sleep(max(0.0, t0 + start_s / speedup - time.monotonic()))
            tasks.append(asyncio.create_task(session(index, start_s)))
        await asyncio.gather(*tasks)
    return done


def _outcome(done: list[LiveCompletion], duration_s: float) -> BusyOutcome:
    ok = [c for c in done if c.ok]
    ttft = [c.ttft_s for c in ok if c.ttft_s is not None]
    failed = [c for c in done if not c.ok and not c.rejected]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed otherwise than busy: {failed[0].error}")
    rejected = sum(c.rejected for c in done)
    return BusyOutcome(len(ok), rejected, duration_s, float(np.mean(ttft)) if ttft else float("nan"))


def set_busy_thresholds(deployment: Deployment, scenario: ScenarioConfig) -> dict:
    """Put the scenario's thresholds on the frontend with `POST /busy_threshold` (the same call
    the sidecar makes); returns the frontend's answer, the thresholds now in force."""
    router = scenario.router
    body = {
        "model": deployment.model_name,
        "active_decode_blocks_threshold": router.active_decode_blocks_threshold,
        "active_prefill_tokens_threshold": router.active_prefill_tokens_threshold,
        "active_prefill_tokens_threshold_frac": router.active_prefill_tokens_threshold_frac,
    }
    request = urllib.request.Request(
        deployment.frontend_url.rstrip("/") + "/busy_threshold",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10.0) as response:
        return json.loads(response.read())
