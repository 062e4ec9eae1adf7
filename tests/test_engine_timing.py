"""Single-request timings against the mocker polynomial, computed by hand.

prefill_ms(T) = 4.209989e-7 T^2 + 1.518344e-2 T + 16.50142
decode_ms(u)  = max(1, -25.74 u^2 + 54.01 u + 5.74), u = KV tokens of the decoding sequences
                / (num_gpu_blocks x block_size)

Deployment: block 16, 4096 blocks (capacity 65536 tokens), one 1000-token prompt, 10 output tokens.
The reference numbers in milliseconds were produced by Dynamo 1.6.1's `dynamo.replay` on the same
request (agg: TTFT 32.105859, E2E 91.165612; 1P/1D at 1 GB/s: TTFT 169.735993, E2E 228.795746).
"""

from __future__ import annotations

import pytest

from envs.sim.config import (
    EngineConfig,
    KvTransferConfig,
    ModelConfig,
    ScenarioConfig,
    TimingConfig,
    TopologyConfig,
    WorkloadConfig,
)
from envs.sim.records import RequestRecord
from envs.sim.run import simulate

B = 16
BLOCKS = 4096
CAPACITY = BLOCKS * B  # 65536
ISL, OSL = 1000, 10
MS = 1e-3
ENGINE = EngineConfig(block_size=B, num_gpu_blocks=BLOCKS)


def prefill_ms(tokens: int) -> float:
    return 4.209989e-7 * tokens**2 + 1.518344e-2 * tokens + 16.50142


def decode_ms(kv_tokens: int) -> float:
    u = kv_tokens / CAPACITY
    return max(1.0, -25.74 * u * u + 54.01 * u + 5.74)


def one_request(topology: TopologyConfig | None = None, **scenario) -> RequestRecord:
    workload = WorkloadConfig(arrival="poisson", rate_rps=1.0, num_requests=1, isl_tokens=ISL, osl_tokens=OSL)
    topology = topology or TopologyConfig()
    result = simulate(ScenarioConfig(engine=ENGINE, topology=topology, workload=workload, **scenario))
    assert len(result.records) == 1
    return result.records[0]


def test_hand_values():
    assert prefill_ms(1000) == pytest.approx(32.1058589, abs=1e-9)
    assert decode_ms(1001) == pytest.approx(6.558946, abs=1e-6)
    assert (
        ModelConfig(num_layers=32, num_kv_heads=8, head_dim=128, kv_dtype_bytes=2).kv_bytes_per_token
        == 131072
    )


def test_agg_single_request():
    rec = one_request()
    assert rec.arrival_s == 0.0
    assert rec.ttft_s == pytest.approx(prefill_ms(ISL) * MS, abs=1e-12)
    # Decode step k (k = 1..9) runs with the prompt and k sampled tokens in the KV cache.
    e2e_ms = prefill_ms(ISL) + sum(decode_ms(ISL + k) for k in range(1, OSL))
    assert rec.e2e_s == pytest.approx(e2e_ms * MS, abs=1e-12)
    assert rec.e2e_s == pytest.approx(91.165612 * MS, abs=1e-8)  # Dynamo replay (ns-rounded)
    assert rec.mean_itl_s == pytest.approx((e2e_ms - prefill_ms(ISL)) / (OSL - 1) * MS, abs=1e-12)
    assert (rec.cached_tokens, rec.num_preemptions, rec.prefill_worker, rec.decode_worker) == (0, 0, 0, 0)


@pytest.mark.parametrize(("speedup", "decode_speedup"), [(2.0, 1.0), (1.0, 4.0), (2.0, 2.0)])
def test_speedup_ratios_divide_pass_times(speedup, decode_speedup):
    rec = one_request(timing=TimingConfig(speedup_ratio=speedup, decode_speedup_ratio=decode_speedup))
    ttft_ms = prefill_ms(ISL) / speedup
    decode_total_ms = sum(decode_ms(ISL + k) for k in range(1, OSL)) / (speedup * decode_speedup)
    assert rec.ttft_s == pytest.approx(ttft_ms * MS, abs=1e-12)
    assert rec.e2e_s == pytest.approx((ttft_ms + decode_total_ms) * MS, abs=1e-12)


DISAGG = TopologyConfig(mode="disagg", kv_transfer=KvTransferConfig(bandwidth_gbps=1.0))
TRANSFER_MS = ISL * 131072 / 1e9 * 1e3  # 131.072 ms at 1 GB/s


def test_disagg_prefill_and_transfer():
    rec = one_request(DISAGG)
    assert (rec.prefill_worker, rec.decode_worker) == (0, 1)
    assert rec.prefill_start_s == 0.0
    assert rec.prefill_end_s == pytest.approx(prefill_ms(ISL) * MS, abs=1e-12)
    # The decode worker is idle, so it reserves the request (and the transfer starts) at once.
    assert rec.transfer_start_s == rec.prefill_end_s
    assert rec.transfer_end_s - rec.transfer_start_s == pytest.approx(TRANSFER_MS * MS, abs=1e-12)
    # TTFT includes exactly one decode pass on the decode worker after the transfer: the pass
    # time is the polynomial at a KV occupancy of about the prompt (between 999 and 1002 tokens).
    first_pass_ms = (rec.first_token_s - rec.transfer_end_s) / MS
    assert decode_ms(999) < first_pass_ms < decode_ms(1002)


def test_disagg_matches_dynamo_replay():
    rec = one_request(DISAGG)
    # Dynamo: prefill + transfer + one decode pass at u = 1000/65536, then 9 more at 1001..1009.
    ttft_ms = prefill_ms(ISL) + TRANSFER_MS + decode_ms(ISL)
    e2e_ms = ttft_ms + sum(decode_ms(ISL + k) for k in range(1, OSL))
    assert ttft_ms == pytest.approx(169.735993, abs=1e-5)  # the replay rounds each pass to 1 ns
    assert e2e_ms == pytest.approx(228.795746, abs=1e-5)
    assert rec.ttft_s == pytest.approx(ttft_ms * MS, abs=1e-10)
    assert rec.e2e_s == pytest.approx(e2e_ms * MS, abs=1e-10)


def test_prefix_cache_hit_recomputes_last_token():
    """Two identical 1024-token prompts, the second sent after the first finished: it reuses
    (1024 - 1) // 16 = 63 blocks = 1008 tokens (vLLM recomputes at least the last prompt token,
    so a fully cached block-aligned prompt reuses one block less) and prefills the other 16."""
    isl = 1024
    workload = WorkloadConfig(
        arrival="poisson",
        rate_rps=0.01,
        num_requests=2,
        isl_tokens=isl,
        osl_tokens=4,
        shared_prefix_ratio=1.0,
        num_prefix_groups=1,
    )
    first, second = simulate(ScenarioConfig(engine=ENGINE, workload=workload, seed=3)).records
    assert second.arrival_s > first.last_token_s  # sequential: the first one's blocks are inactive
    assert first.cached_tokens == 0
    assert second.cached_tokens == (isl - 1) // B * B == 1008
    assert first.ttft_s == pytest.approx(prefill_ms(isl) * MS, abs=1e-12)
    assert second.ttft_s == pytest.approx(prefill_ms(isl - 1008) * MS, abs=1e-12)
