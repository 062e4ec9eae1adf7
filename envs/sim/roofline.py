"""A roofline step-time model for one engine pass of a tensor-parallel worker.

A pass runs two kinds of kernels back to back, each bound by compute or by HBM traffic:

* the GEMMs (QKV, O, MLP, LM head): FLOPs at the weight dtype's peak vs reading the weights once;
* attention: FLOPs at the BF16 peak vs reading (and writing) the KV cache.

    pass_s = max(gemm_flops / (peak_w * e_gemm), weight_bytes / (bw * e_mem))
           + max(attn_flops / (peak_bf16 * e_attn), kv_bytes / (bw * e_mem))
           + 2 * num_layers * allreduce_s(tokens) + overhead (+ per-sequence overhead in decode)

with a ring all-reduce over NVLink of 2 (TP - 1) / TP x tokens x hidden x 2 bytes plus a fixed
latency (none at TP = 1). The efficiency factors and overheads are fitted to measured data
(`envs.calibration`); everything else is a published constant (`envs.sim.hardware`). All counts are
per GPU (the work of one TP rank). Functions accept numpy arrays so a whole grid costs one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.sim.hardware import GpuSpec, ModelShape
from envs.sim.profile_arrays import ProfileArrays

ArrayLike = float | np.ndarray


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model served by one worker: its GPU, tensor parallelism and dtypes."""

    model: ModelShape
    gpu: GpuSpec
    tp: int
    weight_dtype_bytes: float = 1.0  # FP8 GEMM weights
    # FP8 checkpoints (NVIDIA ModelOpt, Neural Magic) keep the embeddings and LM head in BF16.
    embedding_dtype_bytes: float = 2.0
    kv_dtype_bytes: float = 1.0
    activation_dtype_bytes: float = 2.0  # what the all-reduce carries

    def __post_init__(self) -> None:
        if self.tp < 1 or (self.model.num_kv_heads % self.tp and self.tp % self.model.num_kv_heads):
            raise ValueError(f"tp={self.tp} must be >= 1 and split {self.model.num_kv_heads} KV heads")

    @property
    def weight_bytes_read_per_gpu(self) -> float:
        """Read once per pass: the GEMM weights and the LM head (the input embedding is a gather)."""
        m = self.model
        return (
            m.linear_params * self.weight_dtype_bytes + m.embedding_params * self.embedding_dtype_bytes
        ) / self.tp

    @property
    def weight_bytes_resident_per_gpu(self) -> float:
        m = self.model
        resident = (
            m.linear_params * self.weight_dtype_bytes + 2 * m.embedding_params * self.embedding_dtype_bytes
        )
        return resident / self.tp

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of KV per token for the whole worker (all TP ranks): what moves P -> D."""
        return self.model.kv_bytes_per_token(self.kv_dtype_bytes)


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Fitted fractions of peak, and fixed costs the roofline does not see."""

    gemm_compute: float  # fraction of the weight dtype's dense peak the GEMMs reach
    attention_compute: float  # fraction of the BF16 dense peak attention reaches
    memory: float  # fraction of HBM bandwidth reached when streaming weights or KV
    prefill_overhead_ms: float  # per prefill pass (in the data: TTFT's fixed part)
    decode_overhead_ms: float  # per decode iteration (scheduling, sampling, launch)
    decode_per_seq_ms: float  # per sequence in a decode iteration (sampling, output processing)
    # Not fittable from TP=1 data: a typical small-message all-reduce latency within an NVLink
    # node (NCCL / vLLM custom all-reduce, a few to ~10 us). Assumed.
    allreduce_latency_us: float = 8.0

    def __post_init__(self) -> None:
        for name in ("gemm_compute", "attention_compute", "memory"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class PassWork:
    """What one pass costs one GPU, before efficiencies."""

    gemm_flops: ArrayLike
    attention_flops: ArrayLike
    weight_bytes: float
    kv_bytes: ArrayLike
    num_tokens: ArrayLike  # rows through the GEMMs (what the all-reduce carries)


def prefill_work(dep: Deployment, num_new_tokens: ArrayLike, num_prefix_tokens: ArrayLike = 0.0) -> PassWork:
    """One sequence's prefill of T new tokens after P cached ones: causal attention over
    T P + T (T + 1) / 2 query-key pairs; logits for the last token only (as vLLM)."""
    m, t, p = dep.model, np.asarray(num_new_tokens, float), np.asarray(num_prefix_tokens, float)
    pairs = t * p + t * (t + 1) / 2
    return PassWork(
        gemm_flops=2 * (t * m.linear_params + m.embedding_params) / dep.tp,
        attention_flops=4 * m.num_layers * m.num_heads * m.head_dim * pairs / dep.tp,
        weight_bytes=dep.weight_bytes_read_per_gpu,
        kv_bytes=(t + p) * dep.kv_bytes_per_token / dep.tp,  # write the new, read the cached
        num_tokens=t,
    )


def decode_work(dep: Deployment, batch_size: ArrayLike, context_tokens: ArrayLike) -> PassWork:
    """One decode iteration of B sequences, each attending over C tokens of context."""
    m, b, c = dep.model, np.asarray(batch_size, float), np.asarray(context_tokens, float)
    return PassWork(
        gemm_flops=2 * b * (m.linear_params + m.embedding_params) / dep.tp,
        attention_flops=4 * m.num_layers * m.num_heads * m.head_dim * b * c / dep.tp,
        weight_bytes=dep.weight_bytes_read_per_gpu,
        kv_bytes=b * (c + 1) * dep.kv_bytes_per_token / dep.tp,
        num_tokens=b,
    )


def allreduce_s(dep: Deployment, eff: Efficiency, num_tokens: ArrayLike) -> ArrayLike:
    """Two ring all-reduces per layer (after attention and after the MLP); none at TP = 1."""
    if dep.tp == 1:
        return np.zeros_like(np.asarray(num_tokens, float))
    payload = np.asarray(num_tokens, float) * dep.model.hidden_size * dep.activation_dtype_bytes
    one = 2 * (dep.tp - 1) / dep.tp * payload / dep.gpu.nvlink_bytes_s + eff.allreduce_latency_us * 1e-6
    return 2 * dep.model.num_layers * one


def kernels_s(dep: Deployment, eff: Efficiency, work: PassWork) -> ArrayLike:
    """The two rooflines, summed: GEMMs and attention run one after the other."""
    bw = dep.gpu.hbm_bandwidth_bytes_s * eff.memory
    gemm = np.maximum(
        work.gemm_flops / (dep.gpu.peak_flops(dep.weight_dtype_bytes) * eff.gemm_compute),
        work.weight_bytes / bw,
    )
    attention = np.maximum(
        work.attention_flops / (dep.gpu.peak_bf16_flops * eff.attention_compute), work.kv_bytes / bw
    )
    return gemm + attention + allreduce_s(dep, eff, work.num_tokens)


def prefill_ms(dep: Deployment, eff: Efficiency, num_new_tokens: ArrayLike) -> ArrayLike:
    """A prefill pass of T uncached tokens (no prefix), as the profile's `prefill_ttft_ms`."""
    return kernels_s(dep, eff, prefill_work(dep, num_new_tokens)) * 1e3 + eff.prefill_overhead_ms


def decode_ms(
    dep: Deployment, eff: Efficiency, batch_size: ArrayLike, context_tokens: ArrayLike
) -> ArrayLike:
    """One decode iteration (the inter-token latency) of B sequences at context C."""
    per_seq = eff.decode_per_seq_ms * np.asarray(batch_size, float)
    return (
        kernels_s(dep, eff, decode_work(dep, batch_size, context_tokens)) * 1e3
        + eff.decode_overhead_ms
        + per_seq
    )


# Grids for the mocker-format table. Prefill and context axes are geometric: the step time has
# 1/C and T^2 terms, and a ratio of ~1.13 between points keeps linear interpolation within ~0.5%.
# ITL is linear in active KV tokens at fixed context, so a coarse linear KV axis is exact enough.
PREFILL_GRID_TOKENS = np.unique(np.round(np.geomspace(1, 131072, 97)))
CONTEXT_GRID_TOKENS = np.unique(np.round(np.geomspace(1, 131072, 97)))
NUM_KV_GRID_POINTS = 65


def profile_arrays(dep: Deployment, eff: Efficiency, max_active_kv_tokens: int) -> ProfileArrays:
    """The roofline tabulated in the mocker's format: prefill by ISL, decode ITL over (active KV
    tokens, mean context), with the batch size the mocker implies, B = max(1, kv / context)."""
    kv_axis = np.linspace(0.0, float(max_active_kv_tokens), NUM_KV_GRID_POINTS)
    ctx_axis = CONTEXT_GRID_TOKENS.astype(float)
    kv, ctx = np.meshgrid(kv_axis, ctx_axis, indexing="ij")
    batch = np.maximum(1.0, kv / ctx)
    return ProfileArrays(
        prefill_isl=PREFILL_GRID_TOKENS.astype(float),
        prefill_ttft_ms=np.asarray(prefill_ms(dep, eff, PREFILL_GRID_TOKENS), float),
        decode_active_kv_tokens=kv_axis,
        decode_context_length=ctx_axis,
        decode_itl=np.asarray(decode_ms(dep, eff, batch, ctx), float),
    )


def kv_capacity_blocks(
    dep: Deployment,
    activation_reserve_bytes_per_gpu: float,
    block_size: int = 64,
    gpu_memory_utilization: float = 0.9,
) -> int:
    """KV blocks one worker holds: vLLM's budget (utilization x HBM, per GPU) less the resident
    weights and an activation reserve, over the bytes of one block."""
    per_gpu = gpu_memory_utilization * dep.gpu.hbm_capacity_bytes
    free = per_gpu - dep.weight_bytes_resident_per_gpu - activation_reserve_bytes_per_gpu
    if free <= 0:
        raise ValueError(f"{dep.model.name} does not fit on {dep.tp} x {dep.gpu.name}")
    return int(free * dep.tp // (dep.kv_bytes_per_token * block_size))
