"""Live benchmarks of the request path (`poa-gym bench --request-path`, `poa-gym bench --soak`).

Request path: two local deployments of the scenario, plain Dynamo (`layout="dynamo"`) and the
knob router in front of the knob tier, take the same open-loop Poisson load in turn (A, B, A, B:
the machine's noise falls on both); each request is a one-token completion of a prompt that
shares a prefix with others, timed by the client from send to response. The added latency is the
difference of the two layouts' quantiles at each rate.

Soak: the knob-router deployment with `poa-gym sidecar` deciding every interval, under a steady
open-loop load for the whole duration; every `sample_s` it records the requests sent and lost and
the resident memory of the sidecar, the knob router and the frontend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.live.client import prompt_text
from envs.live.deploy import Deployment, down, up
from envs.scenarios import load_scenario


@dataclass(frozen=True, slots=True)
class LoadResult:
    layout: str
    rate_rps: float
    num_sent: int
    num_failed: int
    achieved_rps: float
    latencies_ms: tuple[float, ...] = field(repr=False)

    def quantile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def open_loop(deployment: Deployment, rate_rps: float, duration_s: float, seed: int) -> LoadResult:
    """Poisson arrivals at `rate_rps` for `duration_s`; every request waits for its response."""
    import aiohttp

    rng = np.random.default_rng(seed)
    gaps_s = rng.exponential(1.0 / rate_rps, size=int(rate_rps * duration_s * 1.5) + 10)
    url = deployment.frontend_url + "/v1/completions"
    latencies, failures = [], []

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        body = {
            "model": deployment.model_name,
            "prompt": prompt_text(index % 8, seed * 10**6 + index, 192, 64),
        }
        start_s = time.perf_counter()
        try:
            async with session.post(url, json=body | {"max_tokens": 1}) as response:
                await response.read()
                ok = response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            ok = False
        (latencies if ok else failures).append((time.perf_counter() - start_s) * 1e3)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks, start_s, next_s = [], time.perf_counter(), 0.0
        for index, gap_s in enumerate(gaps_s):
            next_s += gap_s
            if next_s > duration_s:
                break
            delay_s = start_s + next_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(one(session, index)))
        await asyncio.gather(*tasks)
        elapsed_s = time.perf_counter() - start_s
    layout = deployment.layout
    return LoadResult(layout, rate_rps, len(tasks), len(failures), len(tasks) / elapsed_s, tuple(latencies))


def bench_request_path(
    scenario_name: str,
    rates_rps: list[float],
    duration_s: float,
    speedup: float,
    rounds: int = 2,
    progress: Callable[[str], None] = lambda _: None,
) -> list[LoadResult]:
    """Both layouts at each rate, `rounds` times in alternation; results pooled per layout and rate."""
    scenario, _ = load_scenario(scenario_name, [])
    with tempfile.TemporaryDirectory(prefix="poa-gym-bench-") as root:
        deployments = []
        try:
            for layout in ("dynamo", "knob-router"):
                progress(f"starting the {layout} deployment")
                workdir = Path(root) / layout
                deployments.append(up(scenario, workdir, speedup=speedup, layout=layout, timeout_s=120))
            raw: dict[tuple[str, float], list[LoadResult]] = {}
            for round_index in range(rounds):
                for rate in rates_rps:
                    for deployment in deployments:
                        progress(f"round {round_index + 1}/{rounds}: {deployment.layout} at {rate:g} req/s")
                        result = asyncio.run(open_loop(deployment, rate, duration_s, seed=round_index))
                        raw.setdefault((deployment.layout, rate), []).append(result)
        finally:
            for deployment in deployments:
                down(Path(deployment.workdir))
    return [_pool(results) for results in raw.values()]


HOP_FREE = "dynamo+busy-sidecar"


def bench_hop_free(
    scenario_name: str,
    rates_rps: list[float],
    duration_s: float,
    speedup: float,
    rounds: int = 2,
    progress: Callable[[str], None] = lambda _: None,
) -> list[LoadResult]:
    """Plain Dynamo alone, then with `poa-gym sidecar` putting the busy threshold on its frontend
    (`POST /busy_threshold`) every 0.1 s of wall clock, in alternation at each rate. The threshold
    is the lever's "no shedding", so what differs is the sidecar's own traffic to the frontend."""
    scenario, _ = load_scenario(scenario_name, [])
    with tempfile.TemporaryDirectory(prefix="poa-gym-bench-") as root:
        workdir = Path(root) / "dynamo"
        progress("starting the plain Dynamo deployment")
        deployment = up(scenario, workdir, speedup=speedup, layout="dynamo", timeout_s=120)
        argv = [sys.executable, "-m", "eval.cli", "sidecar", "--workdir", str(workdir)]
        argv += [
            "--policy",
            "static:active_prefill_tokens_threshold_frac=8",
            "--interval-s",
            f"{0.1 * speedup:g}",
        ]
        raw: dict[tuple[str, float], list[LoadResult]] = {}
        try:
            for round_index in range(rounds):
                for rate in rates_rps:
                    for label in ("dynamo", HOP_FREE):
                        progress(f"round {round_index + 1}/{rounds}: {label} at {rate:g} req/s")
                        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                        sidecar = subprocess.Popen(argv, **quiet) if label == HOP_FREE else None
                        if sidecar is not None:
                            time.sleep(2.0)  # its start-up and first decisions
                        try:
                            result = asyncio.run(open_loop(deployment, rate, duration_s, seed=round_index))
                        finally:
                            if sidecar is not None:
                                sidecar.terminate()
                                sidecar.wait(timeout=10)
                        raw.setdefault((label, rate), []).append(dataclasses.replace(result, layout=label))
        finally:
            down(workdir)
    return [_pool(results) for results in raw.values()]


def _pool(results: list[LoadResult]) -> LoadResult:
    first = results[0]
    return LoadResult(
        first.layout,
        first.rate_rps,
        sum(r.num_sent for r in results),
        sum(r.num_failed for r in results),
        float(np.mean([r.achieved_rps for r in results])),
        tuple(x for r in results for x in r.latencies_ms),
    )


@dataclass(frozen=True, slots=True)
class SoakSample:
    elapsed_s: float
    num_sent: int
    num_failed: int
    rss_mb: dict[str, float]


def rss_mb(pid: int) -> float:
    """Resident memory of one process, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_soak(
    scenario_name: str,
    policy: str,
    rate_rps: float,
    duration_s: float,
    speedup: float,
    sample_s: float = 30.0,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[list[SoakSample], str]:
    """The samples, and the sidecar's final /metrics text."""
    import urllib.request

    from envs.live.ports import free_ports

    scenario, _ = load_scenario(scenario_name, [])
    with tempfile.TemporaryDirectory(prefix="poa-gym-soak-") as root:
        deployment = up(scenario, Path(root) / "deployment", speedup=speedup, timeout_s=120)
        port = free_ports(1)[0]
        argv = [
            sys.executable,
            "-m",
            "eval.cli",
            "sidecar",
            "--policy",
            policy,
            "--workdir",
            deployment.workdir,
        ]
        sidecar = subprocess.Popen(
            [*argv, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        pids = {p["name"]: p["pid"] for p in deployment.processes} | {"sidecar": sidecar.pid}
        samples: list[SoakSample] = []
        try:
            time.sleep(3.0)
            start_s, sent, failed = time.monotonic(), 0, 0
            while (elapsed_s := time.monotonic() - start_s) < duration_s - 1.0:
                chunk_s = min(sample_s, duration_s - elapsed_s)
                result = asyncio.run(open_loop(deployment, rate_rps, chunk_s, seed=len(samples) + 100))
                sent, failed = sent + result.num_sent, failed + result.num_failed
                names = ("sidecar", "knob-router", "frontend")
                sample = SoakSample(
                    time.monotonic() - start_s, sent, failed, {n: rss_mb(pids[n]) for n in names}
                )
                samples.append(sample)
                progress(f"{sample.elapsed_s:5.0f} s: {sent} sent, {failed} lost, RSS {sample.rss_mb}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                metrics = response.read().decode()
        finally:
            sidecar.terminate()
            sidecar.wait(timeout=10)
            down(Path(deployment.workdir))
    return samples, metrics
