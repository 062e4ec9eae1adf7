"""Model shapes, GPUs and links: the published constants the roofline step-time model uses.

Every number cites its source (a model's config file, a vendor datasheet). `envs/PROFILES.md`
tabulates them. Peak FLOP/s are *dense* (the datasheets print 2:4-sparse figures, twice as large).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
GB = 1e9  # link and HBM bandwidths are decimal (GB/s, TB/s)


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A dense decoder-only transformer, as its config file describes it."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    gated_mlp: bool  # SwiGLU (gate, up, down) vs a plain two-matrix MLP (squared ReLU)
    source: str

    @property
    def linear_params_per_layer(self) -> int:
        """Weights of the GEMMs in one layer: Q, K, V, O projections and the MLP."""
        q_dim = self.num_heads * self.head_dim
        kv_dim = self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (q_dim + 2 * kv_dim) + q_dim * self.hidden_size
        mlp = (3 if self.gated_mlp else 2) * self.hidden_size * self.ffn_size
        return attention + mlp

    @property
    def linear_params(self) -> int:
        return self.num_layers * self.linear_params_per_layer

    @property
    def embedding_params(self) -> int:
        """One vocab x hidden matrix (all three models keep input and output embeddings untied)."""
        return self.vocab_size * self.hidden_size

    def kv_bytes_per_token(self, kv_dtype_bytes: float) -> float:
        """K and V for every layer and KV head (the mocker's rule), summed over TP ranks."""
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * kv_dtype_bytes


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU: dense tensor-core peaks, HBM and NVLink."""

    name: str
    peak_fp8_flops: float  # dense
    peak_bf16_flops: float  # dense
    hbm_bandwidth_bytes_s: float
    hbm_capacity_bytes: float
    nvlink_bytes_s: float  # per direction, per GPU
    source: str

    def peak_flops(self, dtype_bytes: float) -> float:
        return self.peak_fp8_flops if dtype_bytes <= 1 else self.peak_bf16_flops


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A KV-transfer link from a prefill worker to a decode worker."""

    name: str
    bytes_s_per_gpu: float  # per direction; a TP worker drives one link per GPU (rail-aligned)
    source: str


# -- models -------------------------------------------------------------------------------------

LLAMA_3_1_8B = ModelShape(
    name="meta-llama/Llama-3.1-8B-Instruct",
    num_layers=32,
    hidden_size=4096,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    ffn_size=14336,
    vocab_size=128256,
    gated_mlp=True,
    source="https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json",
)

LLAMA_3_1_70B = ModelShape(
    name="meta-llama/Llama-3.1-70B-Instruct",
    num_layers=80,
    hidden_size=8192,
    num_heads=64,
    num_kv_heads=8,
    head_dim=128,
    ffn_size=28672,
    vocab_size=128256,
    gated_mlp=True,
    source="https://huggingface.co/meta-llama/Llama-3.1-70B-Instruct/blob/main/config.json",
)

# model_config.yaml: num_layers 96, hidden_size 18432, ffn_hidden_size 73728, num_attention_heads
# 96, num_query_groups 8, activation squared-relu, no kv_channels (so head_dim = 18432 / 96 = 192).
# The vocabulary (256,000) is from the technical report, arXiv:2406.11704 (and 2402.16819).
NEMOTRON_4_340B = ModelShape(
    name="nvidia/Nemotron-4-340B-Instruct",
    num_layers=96,
    hidden_size=18432,
    num_heads=96,
    num_kv_heads=8,
    head_dim=192,
    ffn_size=73728,
    vocab_size=256000,
    gated_mlp=False,
    source="https://huggingface.co/nvidia/Nemotron-4-340B-Instruct/blob/main/model_config.yaml; "
    "https://arxiv.org/abs/2406.11704",
)

# -- GPUs ---------------------------------------------------------------------------------------

# Datasheet: FP8 3,958 and BF16 1,979 TFLOPS "with sparsity" (dense is half), 141 GB HBM3e at
# 4.8 TB/s, NVLink 900 GB/s (bidirectional: 450 GB/s each way). Capacity is what nvidia-smi
# reports (143,771 MiB), the "141 GB" of the datasheet in GiB.
H200_SXM = GpuSpec(
    name="H200 SXM",
    peak_fp8_flops=1979e12,
    peak_bf16_flops=989.5e12,
    hbm_bandwidth_bytes_s=4.8e12,
    hbm_capacity_bytes=143771 * 1024**2,
    nvlink_bytes_s=450 * GB,
    source="https://www.nvidia.com/en-us/data-center/h200/",
)

# HGX B200 (1,000 W): dense FP8 4.5 PFLOPS and BF16 2.25 PFLOPS per GPU (the HGX page prints
# 72 / 36 PFLOPS sparse for 8 GPUs), HBM3e 8 TB/s, NVLink 5 1.8 TB/s bidirectional (900 GB/s
# each way). Capacity: nvidia-smi reports 183,359 MiB (179 GiB; the datasheet's "1.4 TB" per 8).
B200_HGX = GpuSpec(
    name="B200 (HGX)",
    peak_fp8_flops=4500e12,
    peak_bf16_flops=2250e12,
    hbm_bandwidth_bytes_s=8.0e12,
    hbm_capacity_bytes=183359 * 1024**2,
    nvlink_bytes_s=900 * GB,
    source="https://www.nvidia.com/en-us/data-center/hgx/; "
    "https://resources.nvidia.com/en-us-blackwell-architecture (technical brief, HGX B200 table); "
    "https://docs.vultr.com/inference-cookbook/cuda/getting-started/hardware-overview (nvidia-smi)",
)

# -- links --------------------------------------------------------------------------------------

NVLINK_4 = LinkSpec("NVLink 4 (H200, same node)", H200_SXM.nvlink_bytes_s, H200_SXM.source)
NVLINK_5 = LinkSpec("NVLink 5 (B200, same node)", B200_HGX.nvlink_bytes_s, B200_HGX.source)
# ConnectX-7 NDR: 400 Gb/s = 50 GB/s per NIC; HGX/DGX H200 and B200 nodes have one compute-fabric
# NIC per GPU, so a TP worker's ranks each send their own KV shard over their own NIC.
INFINIBAND_NDR = LinkSpec(
    "InfiniBand NDR 400 Gb/s (across nodes)",
    50 * GB,
    "https://www.nvidia.com/en-us/networking/infiniband-adapters/ (ConnectX-7: 400 Gb/s); "
    "https://docs.nvidia.com/dgx/dgxb200-user-guide/introduction-to-dgxb200.html (8 x 400 Gb/s)",
)

GPUS_PER_NODE = 8  # HGX H200 and HGX B200 boards
