"""Named timing profiles: a deployment (model, GPU, TP, dtypes), the fitted efficiencies, and
the figures a scenario preset needs (KV bytes per token, KV blocks per worker, the P->D link).

A scenario selects one with `timing: {kind: profile, profile: NAME}`; `profile_arrays(NAME)`
tabulates its roofline in the mocker's format (pure computation, cached per name). The constants
and their sources are in `envs/sim/hardware.py` and `envs/PROFILES.md`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from envs.sim import roofline
from envs.sim.hardware import (
    B200_HGX,
    H200_SXM,
    INFINIBAND_NDR,
    LLAMA_3_1_8B,
    LLAMA_3_1_70B,
    NEMOTRON_4_340B,
    NVLINK_4,
    LinkSpec,
)
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.roofline import Deployment, Efficiency, kv_capacity_blocks

# Fitted by `poa-gym profile fit-report` (envs.calibration.fit) to the 17 prefill and 41 decode
# points of the H200 / Llama-3.1-8B-Instruct-FP8 profiler data in ai-dynamo 1.6.1: median
# absolute error 1.5% (prefill TTFT) and 2.7% (decode ITL). Other GPUs and models reuse them:
# an assumption (same software stack, similar kernel efficiency), not a measurement.
H200_FITTED = Efficiency(
    gemm_compute=0.4915,
    attention_compute=0.5572,
    memory=0.8397,
    prefill_overhead_ms=17.73,
    decode_overhead_ms=2.389,
    decode_per_seq_ms=0.01386,
)

# vLLM's memory not spent on weights or KV (activations at 8192 batched tokens, CUDA graphs,
# allocator slack), per GPU: 0.9 x HBM - weights - max_kv_tokens x KV bytes for the H200 data
# (`envs.calibration.implied_activation_reserve_bytes`). Assumed the same for other models.
ACTIVATION_RESERVE_BYTES_PER_GPU = 2.73e9
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
BLOCK_SIZE_TOKENS = 64  # the mocker's vLLM default


@dataclass(frozen=True, slots=True)
class NamedProfile:
    name: str
    description: str
    deployment: Deployment
    efficiency: Efficiency
    kv_link: LinkSpec
    kv_link_note: str

    @property
    def kv_bytes_per_token(self) -> float:
        return self.deployment.kv_bytes_per_token

    def num_gpu_blocks(self, block_size: int = BLOCK_SIZE_TOKENS) -> int:
        return kv_capacity_blocks(
            self.deployment, ACTIVATION_RESERVE_BYTES_PER_GPU, block_size, GPU_MEMORY_UTILIZATION
        )

    @property
    def kv_link_bandwidth_gbps(self) -> float:
        """GB/s from one worker to another: each TP rank sends its KV shard over its own link."""
        return self.kv_link.bytes_s_per_gpu * self.deployment.tp / 1e9

    def arrays(self) -> ProfileArrays:
        return profile_arrays(self.name)


PROFILES: dict[str, NamedProfile] = {
    p.name: p
    for p in (
        NamedProfile(
            name="h200-llama3.1-8b-fp8-tp1",
            description="Llama-3.1-8B FP8 on one H200 (BF16 KV, as measured): the fitted profile",
            deployment=Deployment(LLAMA_3_1_8B, H200_SXM, tp=1, kv_dtype_bytes=2.0),
            efficiency=H200_FITTED,
            kv_link=NVLINK_4,
            kv_link_note="1P1D with both workers on one HGX node: NVLink",
        ),
        NamedProfile(
            name="b200-llama3.1-70b-fp8-tp4",
            description="Llama-3.1-70B FP8 (FP8 KV) on 4 x B200 (HGX), TP=4",
            deployment=Deployment(LLAMA_3_1_70B, B200_HGX, tp=4),
            efficiency=H200_FITTED,
            kv_link=INFINIBAND_NDR,
            kv_link_note="1P/5D = 24 GPUs on 3 nodes of 8, two workers per node: 4 of the 5 decode "
            "workers sit on another node than the prefill worker, so KV crosses InfiniBand",
        ),
        NamedProfile(
            name="b200-nemotron4-340b-fp8-tp8",
            description="Nemotron-4-340B FP8 (FP8 KV) on 8 x B200 (HGX), TP=8: one worker per node",
            deployment=Deployment(NEMOTRON_4_340B, B200_HGX, tp=8),
            efficiency=H200_FITTED,
            kv_link=INFINIBAND_NDR,
            kv_link_note="every worker is a full node, so every P->D transfer crosses InfiniBand",
        ),
    )
}


def get_profile(name: str) -> NamedProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile '{name}' (choose from {', '.join(PROFILES)})") from None


@functools.cache
def profile_arrays(name: str) -> ProfileArrays:
    """The named profile's mocker-format table; the KV axis spans one worker's capacity."""
    p = get_profile(name)
    return roofline.profile_arrays(p.deployment, p.efficiency, p.num_gpu_blocks() * BLOCK_SIZE_TOKENS)
