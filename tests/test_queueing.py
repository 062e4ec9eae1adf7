"""Queueing sanity: one aggregated worker without batching is an M/D/1 queue.

With max_num_seqs = 1 the worker serves one request at a time, FCFS. Identical requests (1000
prompt tokens, 4 output tokens, no jitter, no shared prefixes) take a deterministic service time

    S = prefill_ms(1000) + sum_{k=1..3} decode_ms((1000 + k) / 65536)   (about 51.785 ms),

and Poisson arrivals at rate lambda = rho / S give the Pollaczek-Khinchine mean wait
Wq = rho S / (2 (1 - rho)) (half the M/M/1 wait) and, by Little's law, a time-average number
in the system L = lambda (Wq + S) = rho + rho^2 / (2 (1 - rho)).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from envs.sim.config import EngineConfig, ScenarioConfig, WorkloadConfig
from envs.sim.run import build_cluster

B, BLOCKS = 16, 4096
ISL, OSL = 1000, 4
RHO = 0.5
NUM_REQUESTS = 20_000
WARMUP_S = 50.0
SAMPLE_MEAN_GAP_S = 0.01


def service_s() -> float:
    prefill = 4.209989e-7 * ISL**2 + 1.518344e-2 * ISL + 16.50142
    decode = 0.0
    for k in range(1, OSL):
        u = (ISL + k) / (BLOCKS * B)
        decode += max(1.0, -25.74 * u * u + 54.01 * u + 5.74)
    return (prefill + decode) / 1000.0


S = service_s()
LAMBDA = RHO / S


@pytest.fixture(scope="module")
def run():
    """One long run, with the number in system sampled at Poisson times (PASTA) by a separate
    process until 90% of the arrivals are in."""
    scenario = ScenarioConfig(
        seed=11,
        engine=EngineConfig(block_size=B, num_gpu_blocks=BLOCKS, max_num_seqs=1),
        workload=WorkloadConfig(
            arrival="poisson", rate_rps=LAMBDA, num_requests=NUM_REQUESTS, isl_tokens=ISL, osl_tokens=OSL
        ),
    )
    cluster = build_cluster(scenario)
    window = (WARMUP_S, 0.9 * NUM_REQUESTS / LAMBDA)
    samples: list[int] = []
    rng = np.random.default_rng(99)

    def sampler():
        yield cluster.env.timeout(window[0])
        while cluster.env.now < window[1]:
            samples.append(sum(e.num_active_requests for e in cluster.engines))
            yield cluster.env.timeout(rng.exponential(SAMPLE_MEAN_GAP_S))

    cluster.env.process(sampler())
    cluster.env.run()
    return cluster.records, np.array(samples), window


def test_service_time_is_deterministic_and_unbatched(run):
    records, _, _ = run
    assert len(records) == NUM_REQUESTS
    assert service_s() == pytest.approx(0.051785, abs=1e-6)
    service = np.array([r.last_token_s - r.prefill_start_s for r in records])
    assert np.allclose(service, S, rtol=0, atol=1e-9)
    ordered = sorted(records, key=lambda r: r.prefill_start_s)
    assert all(a.last_token_s <= b.prefill_start_s + 1e-12 for a, b in itertools.pairwise(ordered))
    assert [r.request_id for r in ordered] == sorted(r.request_id for r in records)  # FCFS


def test_mean_wait_matches_md1(run):
    records, _, _ = run
    wq = RHO * S / (2 * (1 - RHO))
    waits = np.array([r.prefill_start_s - r.arrival_s for r in records])
    assert waits.min() >= 0
    # Over seeds the relative error of this estimate has a standard deviation of about 1.5%;
    # M/M/1 would give twice the wait, so 10% separates the two clearly.
    assert waits.mean() == pytest.approx(wq, rel=0.10)
    arrivals = np.sort([r.arrival_s for r in records])
    assert NUM_REQUESTS / arrivals[-1] == pytest.approx(LAMBDA, rel=0.03)


def test_littles_law(run):
    records, samples, (t0, t1) = run
    assert len(samples) > 100_000
    in_window = [r for r in records if t0 <= r.arrival_s < t1]
    arrival_rate = len(in_window) / (t1 - t0)
    mean_time_in_system = float(np.mean([r.e2e_s for r in in_window]))
    sampled_l = float(samples.mean())
    assert sampled_l == pytest.approx(arrival_rate * mean_time_in_system, rel=0.05)
    assert sampled_l == pytest.approx(RHO + RHO**2 / (2 * (1 - RHO)), rel=0.05)  # M/D/1: 0.75
    # The server is busy a fraction rho of the time.
    assert float((samples > 0).mean()) == pytest.approx(RHO, rel=0.05)
