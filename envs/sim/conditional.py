"""Dynamo's conditional disaggregation: a request may skip the remote prefill and run prefill and
decode on one decode worker, as an aggregated request.

Dynamo 1.6.1 (`--router-conditional-disagg`, `--router-conditional-disagg-config JSON` with this
config's fields; `lib/kv-router/src/conditional_disagg.rs`, the prefill router's
`plan_conditional_disagg_decode`), before any prefill routing:

1. the decode router previews its choice with its full cost (overlap credit, load scale,
   temperature: not the load-only override of the plain disaggregated path), booking nothing;
2. effective ISL = prompt tokens less the tokens cached on that decode worker;
3. the policy decides (every comparison strict): `isl_bounding` bypasses when effective ISL <
   `eff_isl_threshold` and effective ISL / ISL < `eff_isl_ratio_threshold`; `prefill_load` when
   the prefill worker the prefill router would pick now has more than `prefill_busy_threshold`
   (else the router queue's threshold) x `max_num_batched_tokens` active prefill tokens;
   `isl_or_load` when either does;
4. with `decode_busy_threshold` set, a bypass also needs the decode worker's booked blocks plus
   the request's to stay within that share of its KV blocks;
5. a bypass books the previewed decode worker and sends the request there whole; otherwise the
   request goes the disaggregated way, and its later decode routing keeps the overlap credit
   (only the reuse assumption and prefill tracking are forced off).

Dynamo's replay does not model it (every arrival goes to a prefill worker) and the mocker's
decode workers publish no KV events, which a live bypass needs, so no reference system here runs
it: the rules above are checked by hand (`tests/test_conditional.py`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

ConditionalPolicy = Literal["isl_bounding", "prefill_load", "isl_or_load"]


@dataclass(config=ConfigDict(extra="forbid", frozen=True, validate_default=True))
class ConditionalDisaggConfig:
    """`--router-conditional-disagg-config`: present means enabled. Defaults are Dynamo's."""

    policy: ConditionalPolicy = "isl_bounding"
    eff_isl_threshold: int = Field(2048, ge=0)
    eff_isl_ratio_threshold: float = Field(0.7, ge=0, le=1, allow_inf_nan=False)
    prefill_busy_threshold: float | None = Field(None, ge=0, allow_inf_nan=False)
    decode_busy_threshold: float | None = Field(None, ge=0, allow_inf_nan=False)


def isl_bounded(config: ConditionalDisaggConfig, isl_tokens: int, cached_tokens: int) -> bool:
    """`isl_bounding`'s test: little of the prompt is left to prefill once the cache is used."""
    effective = isl_tokens - min(cached_tokens, isl_tokens)
    if effective >= config.eff_isl_threshold:
        return False
    return effective / max(isl_tokens, 1) < config.eff_isl_ratio_threshold


def bypasses(
    config: ConditionalDisaggConfig,
    isl_tokens: int,
    cached_tokens: int,
    prefill_busy: bool,
    decode_over_guard: bool,
) -> bool:
    """Whether the request runs on the previewed decode worker (steps 3 and 4 above)."""
    if config.policy == "isl_bounding":
        wanted = isl_bounded(config, isl_tokens, cached_tokens)
    elif config.policy == "prefill_load":
        wanted = prefill_busy
    else:
        wanted = prefill_busy or isl_bounded(config, isl_tokens, cached_tokens)
    return wanted and not decode_over_guard
