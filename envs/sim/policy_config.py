"""Dynamo 1.6.1's router policy config (`--router-policy-config FILE`): policy classes, each a
deficit-round-robin queue in the router queue with its own busy thresholds and queue limits.

The YAML shape is Dynamo's own (`lib/kv-router/src/scheduling/policy_config.rs`, checked against
the 1.6.1 wheel's strings), so a scenario can hold a real policy file's mapping:

    default_policy_family: standard
    uncached_isl_buckets: [{min_tokens: 0, bucket: short}, {min_tokens: 4096, bucket: long}]
    policy_classes:
      - {name: std-short, policy_family: standard, cache_bucket: short, quantum: 4096,
         prefill_busy_threshold_frac: 0.5}
      - ...
    models: {<served model name>: <a profile of the same three fields>}

A request names a policy (header `x-dynamo-meta-policy-class`): an explicit class (one with
neither `policy_family` nor `cache_bucket`) is taken as is; otherwise the named family, or the
default family for a missing or unknown name, is crossed with the request's bucket, the last one
whose `min_tokens` <= its uncached prompt tokens. The model's profile replaces the root one
wholesale; with neither, the router queue is Dynamo's one synthetic class
(`router_queue_threshold`, `router_queue_policy`).

The file's `router`, `worker_selection` and `request_classifier` sections are refused here: the
first sets router infrastructure (the scenario's router fields say it), the others name plugins
the simulator does not have.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid", frozen=True, validate_default=True)
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.-]+")
# Sections of Dynamo's file that carry no queue policy; what to do instead.
_UNSIMULATED = {
    "router": "router infrastructure settings; set the scenario's router fields instead",
    "worker_selection": "plugin worker selectors are not simulated; remove it",
    "request_classifier": "plugin request classifiers are not simulated; remove it",
}


def _check_name(name: str, kind: str, where: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{where} {kind} name {name!r} must match [A-Za-z0-9_.-]+")


@dataclass(config=_STRICT)
class UncachedIslBucket:
    """Requests whose uncached prompt tokens are >= `min_tokens` (up to the next bucket's)."""

    min_tokens: Annotated[int, Field(ge=0)]
    bucket: str


@dataclass(config=_STRICT)
class PolicyClassConfig:
    """One physical queue. It queues only if a busy threshold is set; a worker is busy for it
    when its active prefill tokens exceed `prefill_busy_threshold`, or exceed
    `prefill_busy_threshold_frac` x its max_num_batched_tokens. The `*_queue_limit_per_worker`
    caps (x the number of workers) turn a request away (HTTP 529) when the class's queue already
    holds that many requests, prompt tokens, or cached prompt tokens."""

    name: str
    quantum: Annotated[int, Field(gt=0)]  # DRR credit per round, in uncached prompt tokens
    policy_family: str | None = None
    cache_bucket: str | None = None
    queue_policy: Literal["fcfs", "wspt"] = "fcfs"
    prefill_busy_threshold: int | None = Field(None, ge=0)
    prefill_busy_threshold_frac: float | None = Field(None, ge=0, allow_inf_nan=False)
    request_queue_limit_per_worker: int | None = Field(None, ge=0)
    raw_isl_token_queue_limit_per_worker: int | None = Field(None, ge=0)
    cached_token_queue_limit_per_worker: int | None = Field(None, ge=0)

    @property
    def queueing_enabled(self) -> bool:
        return self.prefill_busy_threshold is not None or self.prefill_busy_threshold_frac is not None

    @property
    def explicit(self) -> bool:
        return self.policy_family is None


@dataclass(config=_STRICT)
class PolicyProfile:
    """A complete family x bucket matrix of classes, plus any explicit classes."""

    default_policy_family: str
    uncached_isl_buckets: tuple[UncachedIslBucket, ...]
    policy_classes: tuple[PolicyClassConfig, ...]

    @model_validator(mode="after")
    def _complete(self) -> PolicyProfile:
        _validate_profile(
            self.default_policy_family, self.uncached_isl_buckets, self.policy_classes, "profile"
        )
        return self

    def class_index(self, requested: str | None, uncached_tokens: int) -> int:
        """The queue a request goes to (Dynamo's `resolve_class_index`)."""
        for index, c in enumerate(self.policy_classes):
            if c.explicit and c.name == requested:
                return index
        families = {c.policy_family for c in self.policy_classes if not c.explicit}
        family = requested if requested in families else self.default_policy_family
        starts = [b.min_tokens for b in self.uncached_isl_buckets]
        bucket = self.uncached_isl_buckets[bisect.bisect_right(starts, uncached_tokens) - 1].bucket
        for index, c in enumerate(self.policy_classes):
            if c.policy_family == family and c.cache_bucket == bucket:
                return index
        raise AssertionError("validated profiles have every family x bucket class")

    def needs_cache_state(self, requested: str | None) -> bool:
        """Whether classifying needs the uncached tokens (not for an explicit class)."""
        return not any(c.explicit and c.name == requested for c in self.policy_classes)


def _validate_profile(
    default_family: str,
    buckets: tuple[UncachedIslBucket, ...],
    classes: tuple[PolicyClassConfig, ...],
    where: str,
) -> None:
    _check_name(default_family, "policy family", where)
    if not classes:
        raise ValueError(f"{where} policy_classes must not be empty")
    if not buckets:
        raise ValueError(f"{where} uncached_isl_buckets must not be empty")
    if buckets[0].min_tokens != 0:
        raise ValueError(f"{where} uncached_isl_buckets must start at min_tokens 0")
    if any(b.min_tokens <= a.min_tokens for a, b in itertools.pairwise(buckets)):
        raise ValueError(f"{where} uncached_isl_buckets min_tokens must be strictly increasing")
    bucket_names = [b.bucket for b in buckets]
    for name in bucket_names:
        _check_name(name, "cache bucket", where)
        if bucket_names.count(name) > 1:
            raise ValueError(f"{where} contains duplicate cache bucket {name!r}")
    cells: dict[tuple[str, str], str] = {}
    for c in classes:
        _check_class(c, bucket_names, cells, where)
        if [d.name for d in classes].count(c.name) > 1:
            raise ValueError(f"{where} contains duplicate policy class {c.name!r}")
    families = list(dict.fromkeys(family for family, _ in cells))
    if default_family not in families:
        raise ValueError(
            f"{where} default_policy_family {default_family!r} does not name a configured family"
        )
    for c in classes:
        if c.explicit and c.name in families:
            raise ValueError(f"{where} explicit policy class {c.name!r} collides with a policy family")
    for family in families:
        for bucket in bucket_names:
            if (family, bucket) not in cells:
                raise ValueError(
                    f"{where} is missing a policy class for family {family!r} and bucket {bucket!r}"
                )


def _check_class(
    c: PolicyClassConfig, bucket_names: list[str], cells: dict[tuple[str, str], str], where: str
) -> None:
    _check_name(c.name, "policy class", where)
    if (c.policy_family is None) != (c.cache_bucket is None):
        raise ValueError(
            f"{where} policy class {c.name!r} must specify both policy_family and cache_bucket "
            "or neither for an explicit class"
        )
    if c.policy_family is None or c.cache_bucket is None:
        return
    _check_name(c.policy_family, "policy family", where)
    _check_name(c.cache_bucket, "cache bucket", where)
    if c.cache_bucket not in bucket_names:
        raise ValueError(
            f"{where} policy class {c.name!r} references unknown cache bucket {c.cache_bucket!r}"
        )
    cell = (c.policy_family, c.cache_bucket)
    if cell in cells:
        raise ValueError(
            f"{where} contains duplicate policy classes for family {cell[0]!r} and bucket {cell[1]!r}"
        )
    cells[cell] = c.name


@dataclass(config=_STRICT)
class RouterPolicyConfig:
    """Dynamo's policy file: a root profile (all three fields or none) and per-model profiles."""

    default_policy_family: str | None = None
    uncached_isl_buckets: tuple[UncachedIslBucket, ...] | None = None
    policy_classes: tuple[PolicyClassConfig, ...] | None = None
    models: dict[str, PolicyProfile] = Field(default_factory=dict)
    router: dict | None = None
    worker_selection: dict | None = None
    request_classifier: dict | None = None

    @model_validator(mode="after")
    def _shape(self) -> RouterPolicyConfig:
        for section, why in _UNSIMULATED.items():
            if getattr(self, section) is not None:
                raise ValueError(f"{section}: {why}")
        root = (self.default_policy_family, self.uncached_isl_buckets, self.policy_classes)
        if any(v is not None for v in root) and any(v is None for v in root):
            raise ValueError(
                "root profile must specify default_policy_family, uncached_isl_buckets, and "
                "policy_classes when any root profile field is present"
            )
        if "" in self.models:
            raise ValueError("model profile name must not be empty")
        if self.default_policy_family is not None:  # the all-or-none rule holds: the others too
            _validate_profile(
                self.default_policy_family, self.uncached_isl_buckets or (), self.policy_classes or (), "root"
            )
        if self.root is None and not self.models:
            raise ValueError("router policy config must define a root profile or at least one model profile")
        return self

    @property
    def root(self) -> PolicyProfile | None:
        if self.default_policy_family is None or self.uncached_isl_buckets is None:
            return None
        assert self.policy_classes is not None
        return PolicyProfile(self.default_policy_family, self.uncached_isl_buckets, self.policy_classes)

    def profile_for(self, model_name: str) -> PolicyProfile | None:
        """The model's profile, else the root one (None: Dynamo's synthetic single class)."""
        return self.models.get(model_name) or self.root


def policy_config_document(policy: RouterPolicyConfig) -> dict[str, Any]:
    """The policy config as Dynamo's YAML file holds it (unset fields left out): what
    `--router-policy-config` and the replay's `router_policy_config` read."""
    return _drop_none(asdict(policy))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


def check_policy_fits(policy: RouterPolicyConfig | None, mode: str, queue_threshold: float | None) -> None:
    """A router's policy config against its other fields (RouterConfig's validator)."""
    if policy is None:
        return
    if mode != "kv":
        raise ValueError(f"policy_config: the router queue is Dynamo's KV router's; router mode is {mode!r}")
    if queue_threshold is not None:
        # Dynamo builds its one synthetic class from the threshold only where no profile applies.
        raise ValueError(
            "router_queue_threshold: with policy_config, set policy_classes[].prefill_busy_threshold_frac"
            " (and queue_policy) instead"
        )


def check_class_mix(mix: dict[str, float]) -> None:
    """The workload's policy-class shares: names Dynamo accepts, shares summing to at most 1."""
    for name, share in mix.items():
        _check_name(name, "policy class", "policy_class_mix")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"policy_class_mix[{name!r}]: a share in [0, 1], got {share}")
    if sum(mix.values()) > 1.0 + 1e-9:
        raise ValueError(f"policy_class_mix: shares sum to {sum(mix.values()):g} > 1")


def draw_policy_class(mix: dict[str, float], uniform: float) -> str | None:
    """The class named by a request whose uniform draw is `uniform` (None past the shares)."""
    edge = 0.0
    for name, share in mix.items():
        edge += share
        if uniform < edge:
            return name
    return None
