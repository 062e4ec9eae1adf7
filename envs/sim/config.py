"""Typed, validated configuration of one simulated deployment.

Every component has one frozen config dataclass, validated on construction (pydantic). Unknown
fields are rejected, so a typo in a scenario file is an error, not a silently ignored knob.
Defaults follow Dynamo 1.6.1 (`dynamo.mocker` and the KV router) unless a comment says otherwise.
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

from envs.sim.conditional import ConditionalDisaggConfig
from envs.sim.kv_tiers_config import KvTiersConfig
from envs.sim.policy_config import RouterPolicyConfig, check_class_mix, check_policy_fits
from envs.sim.profile_catalog import PROFILES

_STRICT = ConfigDict(extra="forbid", frozen=True, validate_default=True)

RouterMode = Literal["kv", "round_robin", "random", "power_of_two", "least_loaded", "cache_aware", "llm_d"]


@dataclass(config=_STRICT)
class EngineConfig:
    """One worker's vLLM-v1-style engine (the mocker's `vllm` engine type)."""

    block_size: int = Field(64, gt=0, le=4096)
    num_gpu_blocks: int = Field(16384, gt=0)
    max_num_seqs: int = Field(256, gt=0)
    max_num_batched_tokens: int = Field(8192, gt=0)
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    preemption_mode: Literal["lifo", "fifo"] = "lifo"
    kv_tiers: KvTiersConfig = KvTiersConfig()

    @model_validator(mode="after")
    def _batch_fits(self) -> EngineConfig:
        # vLLM refuses this too: every running sequence must be able to decode in each pass.
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs})"
            )
        if 0 < self.kv_tiers.host_blocks < self.num_gpu_blocks:
            warnings.warn(
                f"kv_tiers.host_blocks ({self.kv_tiers.host_blocks}) < "
                f"num_gpu_blocks ({self.num_gpu_blocks}): each lower tier should be larger than the "
                "one above it, or it churns (KVBM guide)",
                stacklevel=2,
            )
        return self

    @property
    def capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size


@dataclass(config=_STRICT)
class ModelConfig:
    """The model shape that sets the KV-cache footprint (bytes per token moved P->D)."""

    name: str = "tiny"
    num_layers: int = Field(32, gt=0)
    num_kv_heads: int = Field(8, gt=0)
    head_dim: int = Field(128, gt=0)
    kv_dtype_bytes: float = Field(2.0, gt=0)

    @property
    def kv_bytes_per_token(self) -> float:
        # K and V, per layer, per KV head (the mocker's auto value from config.json).
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes


@dataclass(config=_STRICT)
class TimingConfig:
    """How long one engine pass takes.

    `polynomial` is the mocker's default formula; `profile` interpolates a mocker-format profile:
    a file (`profile_path`; the NPZ arrays are loaded at the edge and passed to the timing model,
    never read here) or a built-in roofline profile by name (`profile`, `envs.sim.profile_catalog`).
    """

    kind: Literal["polynomial", "profile"] = "polynomial"
    profile_path: str | None = None
    profile: str | None = None
    speedup_ratio: float = Field(1.0, gt=0)
    decode_speedup_ratio: float = Field(1.0, gt=0)
    # Run-to-run hardware noise: every timing query is scaled by a lognormal factor of mean 1 and
    # this coefficient of variation (0: exact timing, as Dynamo's mocker). `noise_stream` picks
    # the noise realisation independently of the workload, as separate runs on real GPUs differ.
    step_time_cv: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    noise_stream: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _profile_source(self) -> TimingConfig:
        if self.kind == "profile" and not (self.profile_path or self.profile):
            raise ValueError(
                "kind 'profile' needs profile_path (a mocker-format .npz) or profile "
                f"(a built-in name: {', '.join(_profile_names())})"
            )
        if self.profile_path and self.profile:
            raise ValueError("set profile_path or profile, not both")
        if self.kind != "profile" and (self.profile_path or self.profile):
            raise ValueError("profile_path and profile need kind 'profile'")
        if self.profile is not None and self.profile not in _profile_names():
            raise ValueError(
                f"profile '{self.profile}' is not a built-in profile ({', '.join(_profile_names())})"
            )
        return self


def _profile_names() -> list[str]:
    return list(PROFILES)


@dataclass(config=_STRICT)
class KvTransferConfig:
    """The link that carries KV blocks from a prefill worker to a decode worker."""

    bandwidth_gbps: float = Field(64.0, ge=0)  # GB/s; 0 means no transfer delay (as the mocker)
    latency_ms: float = Field(0.0, ge=0)


@dataclass(config=_STRICT)
class RouterConfig:
    """The router: its mode, the KV router's cost knobs (`KvRouterConfig`) and which Dynamo
    release's disaggregated routing to follow.

    `dynamo-1.6` (the default): the decode stage is forced load-only (credit 0, no KV-reuse
    assumption, no prefill tracking) and ties break at random. `dynamo-0.9` (the paper's
    release): the decode stage forces only `overlap_score_weight = 0`, so prefix blocks already
    booked on a decode worker count once; ties go to the worker with the fewest cached blocks;
    the only knobs are `overlap_score_weight` and `router_temperature`.
    """

    mode: RouterMode = "kv"
    router_semantics: Literal["dynamo-1.6", "dynamo-0.9"] = "dynamo-1.6"
    overlap_score_credit: float = Field(1.0, ge=0, allow_inf_nan=False)
    overlap_score_credit_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    prefill_load_scale: float = Field(1.0, ge=0, allow_inf_nan=False)
    overlap_score_weight: float | None = Field(None, ge=0, allow_inf_nan=False)  # v0.9 name
    decode_active_request_weight: float = Field(0.0, ge=0, allow_inf_nan=False)
    host_cache_hit_weight: float = Field(0.75, ge=0, allow_inf_nan=False)
    disk_cache_hit_weight: float = Field(0.25, ge=0, allow_inf_nan=False)
    router_temperature: float = Field(0.0, ge=0, allow_inf_nan=False)
    assume_kv_reuse: bool = True
    track_prefill_tokens: bool = True
    track_active_blocks: bool = True
    # mode cache_aware (SGLang's router; `envs/sim/router_classic.py` cites the sources). The
    # defaults are its launcher's (`--cache-threshold 0.3 --balance-abs-threshold 64
    # --balance-rel-threshold 1.5`), with its validation: threshold in [0, 1], relative >= 1.
    sglang_cache_threshold: float = Field(0.3, ge=0, le=1, allow_inf_nan=False)  # match rate
    sglang_balance_abs_threshold: int = Field(64, ge=0)  # in-flight requests
    sglang_balance_rel_threshold: float = Field(1.5, ge=1, allow_inf_nan=False)
    # Where a cache miss goes: the least-loaded worker (SGLang since sglang#14650, Dec 2025) or
    # the worker with the smallest approximate tree (the rule before it).
    sglang_miss_fallback: Literal["min_load", "smallest_tree"] = "min_load"
    # mode llm_d: the scorer weights of llm-d's default profile (prefix 3, KV utilisation 2, queue 2).
    llm_d_prefix_weight: float = Field(3.0, ge=0, allow_inf_nan=False)
    llm_d_kv_utilization_weight: float = Field(2.0, ge=0, allow_inf_nan=False)
    llm_d_queue_weight: float = Field(2.0, ge=0, allow_inf_nan=False)
    # Dynamo's router queue (`--router-queue-threshold`, `--router-queue-policy`; lib/kv-router
    # scheduling/queue.rs): a request waits in the router while every worker of the first stage
    # has more than threshold x max_num_batched_tokens active prefill tokens (and behind any request
    # already waiting), and is routed when a prefill finishes or a request leaves. fcfs serves the
    # oldest first, wspt the fewest uncached prompt tokens first (Smith's rule), lcfs the newest.
    router_queue_threshold: float | None = Field(None, ge=0, allow_inf_nan=False)
    router_queue_policy: Literal["fcfs", "wspt", "lcfs"] = "fcfs"
    # Dynamo's busy thresholds (`--active-decode-blocks-threshold` etc., `POST /busy_threshold`;
    # envs/sim/busy.py): busy workers are passed over, and a request finding its pool all busy is
    # rejected. Unset, nothing is rejected.
    active_decode_blocks_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    active_prefill_tokens_threshold: int | None = Field(None, ge=0)
    active_prefill_tokens_threshold_frac: float | None = Field(None, ge=0, allow_inf_nan=False)
    # Dynamo's conditional disaggregation (`--router-conditional-disagg-config`; envs/sim/conditional.py):
    # a request may run prefill and decode on one decode worker. Absent: off.
    conditional_disagg: ConditionalDisaggConfig | None = None
    # Dynamo's router policy config (`--router-policy-config`; envs/sim/policy_config.py): policy
    # classes served by DRR in the router queue, each with its busy thresholds. Absent: off.
    policy_config: RouterPolicyConfig | None = None

    @model_validator(mode="after")
    def _frontend_features_fit(self) -> RouterConfig:
        check_policy_fits(self.policy_config, self.mode, self.router_queue_threshold)
        busy = (
            self.active_decode_blocks_threshold,
            self.active_prefill_tokens_threshold,
            self.active_prefill_tokens_threshold_frac,
        )
        if self.mode in ("cache_aware", "llm_d") and any(v is not None for v in busy):
            raise ValueError(
                f"busy thresholds are Dynamo's frontend's; router mode {self.mode!r} has none "
                "(leave active_*_threshold unset)"
            )
        cond = self.conditional_disagg
        if cond is not None and self.mode != "kv":
            raise ValueError("conditional_disagg needs router mode 'kv' (Dynamo previews the decode route)")
        unset = cond is not None and cond.prefill_busy_threshold is None is self.router_queue_threshold
        if unset and cond.policy != "isl_bounding":  # Dynamo refuses to start
            raise ValueError(f"conditional_disagg.policy {cond.policy}: needs a prefill busy threshold")
        return self

    @model_validator(mode="after")
    def _only_v09_knobs(self) -> RouterConfig:
        if self.router_semantics != "dynamo-0.9":
            return self
        for name, default in _V09_ABSENT_KNOBS.items():
            if getattr(self, name) != default:
                raise ValueError(
                    f"{name}: Dynamo v0.9 has no such knob (router_semantics dynamo-0.9 takes "
                    "overlap_score_weight and router_temperature); leave it at its default"
                )
        return self


# Knobs that came after v0.9, with the values that make 1.6.1's formula equal v0.9's.
_V09_ABSENT_KNOBS = {
    "overlap_score_credit": 1.0,
    "overlap_score_credit_decay": 0.0,
    "prefill_load_scale": 1.0,
    "decode_active_request_weight": 0.0,
    "assume_kv_reuse": True,
    "track_prefill_tokens": True,
    "conditional_disagg": None,
}


@dataclass(config=_STRICT)
class TopologyConfig:
    """Aggregated workers, or prefill and decode pools (disaggregated serving)."""

    mode: Literal["agg", "disagg"] = "agg"
    num_workers: int = Field(1, gt=0)
    num_prefill_workers: int = Field(1, gt=0)
    num_decode_workers: int = Field(1, gt=0)
    prefill_engine: EngineConfig | None = None
    decode_engine: EngineConfig | None = None
    kv_transfer: KvTransferConfig = KvTransferConfig()


@dataclass(config=_STRICT)
class ScaleStep:
    """At `at_s`, scale the pools to these sizes (None: unchanged; aggregated: `num_decode`)."""

    at_s: float = Field(ge=0, allow_inf_nan=False)
    num_prefill: int | None = Field(None, gt=0)
    num_decode: int | None = Field(None, gt=0)


@dataclass(config=_STRICT)
class ScalingConfig:
    """Moving workers between pools while the deployment runs (Dynamo's Planner, or an agent).

    A scale-up starts a new worker, which serves after `startup_s` (the replay's
    `startup_time`; live, `envs.live.pools` launches it that much later); a scale-down drains
    the highest-numbered worker of the pool: it takes no new request and leaves once its
    requests are done, as in Dynamo's replay. `max_workers` is
    the budget of prefill plus decode workers (aggregated: workers) that no target may exceed.
    `schedule` scripts moves at fixed times (`envs.sim.scaling.ScheduledScaling`).
    """

    startup_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_workers: int | None = Field(None, gt=0)
    schedule: tuple[ScaleStep, ...] = ()  # scripted moves, in at_s order

    @model_validator(mode="after")
    def _ordered(self) -> ScalingConfig:
        starts = [step.at_s for step in self.schedule]
        if starts != sorted(starts):
            raise ValueError("scaling.schedule steps must be in increasing at_s order")
        return self


@dataclass(config=_STRICT)
class LoadStep:
    """From `at_s` on, the load is `value` (concurrency for closed loop, requests/s otherwise)."""

    at_s: float = Field(ge=0)
    value: float = Field(gt=0)


@dataclass(config=_STRICT)
class WorkloadConfig:
    """Who sends what, and when.

    Arrivals: `closed_loop` (C clients, each sends its next request when the last finishes),
    `poisson` and `gamma` (open loop; gamma with coefficient of variation `burstiness_cv`), or
    `trace` (a Mooncake-format JSONL replayed at its timestamps, or closed loop if `concurrency`
    is set).
    """

    arrival: Literal["closed_loop", "poisson", "gamma", "trace"] = "poisson"
    rate_rps: float = Field(10.0, gt=0)
    concurrency: int | None = Field(None, gt=0)
    burstiness_cv: float = Field(1.0, gt=0)
    num_requests: int | None = Field(None, gt=0)
    isl_tokens: int = Field(1024, gt=0)
    osl_tokens: int = Field(128, gt=0)
    isl_jitter: float = Field(0.0, ge=0, lt=1)  # uniform +-fraction around isl_tokens
    osl_jitter: float = Field(0.0, ge=0, lt=1)
    shared_prefix_ratio: float = Field(0.0, ge=0, le=1)
    num_prefix_groups: int = Field(1, gt=0)
    turns_per_session: int = Field(1, gt=0)
    inter_turn_delay_s: float = Field(0.0, ge=0)
    # `exponential`: each think time is drawn with mean inter_turn_delay_s (the classic
    # interactive-user model). A fixed delay keeps closed-loop clients that start together in
    # lock-step, so load arrives in waves that alias with a 5-s control interval.
    inter_turn_delay: Literal["fixed", "exponential"] = "fixed"
    # How long a client waits after Dynamo turns its request away (all workers busy, HTTP 529)
    # before it sends the request again (chosen: the frontend sends no Retry-After).
    retry_after_s: float = Field(1.0, gt=0, allow_inf_nan=False)
    trace_path: str | None = None
    trace_block_tokens: int = Field(512, gt=0)
    trace_time_scale: float = Field(1.0, gt=0)  # >1 compresses the trace's timeline
    load_schedule: tuple[LoadStep, ...] = ()
    # The share of requests (drawn per session, from the seed) naming each router policy class
    # (Dynamo's `x-dynamo-meta-policy-class` header); the rest name none (the default family).
    policy_class_mix: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadConfig:
        check_class_mix(self.policy_class_mix)
        if self.arrival == "trace" and not self.trace_path:
            raise ValueError("arrival 'trace' needs trace_path (a Mooncake-format .jsonl)")
        if self.arrival == "closed_loop" and self.concurrency is None:
            raise ValueError("arrival 'closed_loop' needs concurrency (the number of clients)")
        starts = [step.at_s for step in self.load_schedule]
        if starts != sorted(starts):
            raise ValueError("load_schedule steps must be in increasing at_s order")
        return self


@dataclass(config=_STRICT)
class ScenarioConfig:
    """A whole simulated experiment: deployment, workload, router and run length."""

    name: str = "scenario"
    description: str = ""
    seed: int = Field(0, ge=0)
    duration_s: float | None = Field(None, gt=0)
    topology: TopologyConfig = TopologyConfig()
    engine: EngineConfig = EngineConfig()
    model: ModelConfig = ModelConfig()
    timing: TimingConfig = TimingConfig()
    router: RouterConfig = RouterConfig()
    workload: WorkloadConfig = WorkloadConfig()
    scaling: ScalingConfig = ScalingConfig()

    @model_validator(mode="after")
    def _has_end(self) -> ScenarioConfig:
        if (
            self.duration_s is None
            and self.workload.num_requests is None
            and self.workload.arrival != "trace"
        ):
            raise ValueError("set duration_s or workload.num_requests, or the run never ends")
        budget, topology = self.scaling.max_workers, self.topology
        initial = (
            topology.num_workers
            if topology.mode == "agg"
            else topology.num_prefill_workers + topology.num_decode_workers
        )
        if budget is not None and initial > budget:
            raise ValueError(f"scaling.max_workers ({budget}) is below the topology's {initial} workers")
        if self.router.conditional_disagg is not None and topology.mode != "disagg":
            raise ValueError("router.conditional_disagg: needs a disaggregated topology")
        return self

    def engine_for(self, kind: str) -> EngineConfig:
        """The engine config of a worker kind (`agg`, `prefill` or `decode`)."""
        if kind == "prefill" and self.topology.prefill_engine is not None:
            return self.topology.prefill_engine
        if kind == "decode" and self.topology.decode_engine is not None:
            return self.topology.decode_engine
        return self.engine
