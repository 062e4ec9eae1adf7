"""Policy specs: the text of `poa-gym sweep --policies` parsed into named scenario overrides.

Grammar (comma-separated tokens; values are parsed as YAML and validated by the scenario):

    round_robin | random | power_of_two | least_loaded   Dynamo's load-based baseline routers
    cache_aware | llm_d                                 SGLang's and llm-d's routers (router_classic.py)
    kv                                                  the KV router with the scenario's knobs
    static:KNOB=VALUE[,KNOB=VALUE...]                   the KV router with these knobs fixed
    grid:KNOB=V1/V2/...[,KNOB=V1/V2/...]                one static policy per point of the cross
                                                        product (first knob varies slowest)

Commas separate both policies and a static policy's knobs, so a token with `=` and no `kind:`
continues the previous static or grid policy: `static:a=1,b=2,round_robin` is two policies.

New kinds (controllers, learned policies) register one parser in `_KINDS`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from envs.errors import UserError
from envs.sim.config import RouterConfig

# Baselines keep the scenario's router knobs and only pick the mode.
BASELINES: dict[str, tuple[str, ...]] = {
    "round_robin": ("router.mode=round_robin",),
    "random": ("router.mode=random",),
    "power_of_two": ("router.mode=power_of_two",),
    "least_loaded": ("router.mode=least_loaded",),
    "kv": ("router.mode=kv",),
    # Classic routers beside Dynamo's (envs/sim/router_classic.py): SGLang's and llm-d's defaults.
    "cache_aware": ("router.mode=cache_aware",),
    "llm_d": ("router.mode=llm_d",),
}
# `poa-gym eval`'s names for the same fixed policies (agents/registry.py), so both commands take
# them. Dynamo's credit decay is a startup-only gain on the prefill-load imbalance; at 1.0, one
# request's worth of extra prefill load on a worker halves its overlap credit.
CREDIT_DECAY = 1.0
NAMED_FIXED: dict[str, tuple[str, ...]] = {
    "default": BASELINES["kv"],
    "credit-decay": ("router.mode=kv", f"router.overlap_score_credit_decay={CREDIT_DECAY}"),
    "round-robin": BASELINES["round_robin"],
    "p2c": BASELINES["power_of_two"],
    "least-loaded": BASELINES["least_loaded"],
    "cache-aware": BASELINES["cache_aware"],
    "llm-d": BASELINES["llm_d"],
}
BASELINES.update(NAMED_FIXED)
# Policies that change the knobs as they go: they need the control loop of `poa-gym eval`.
ADAPTIVE = ("knee", "best-static")
# Every RouterConfig field but the mode is a knob a static policy may fix.
KNOBS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RouterConfig) if f.name != "mode")
GRID_SEPARATOR = "/"


class PolicySpecError(UserError, ValueError):
    """A `--policies` text that cannot be parsed; the message names the token and the rule."""


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One policy of a sweep: a stable name (used in result rows) and how to apply it.

    Attributes:
        name: stable identifier, e.g. `round_robin` or `static:router_temperature=0.5`.
        kind: `baseline` or `static`.
        overrides: scenario overrides (`key=value`), applied after the user's `--set`.
    """

    name: str
    kind: str
    overrides: tuple[str, ...]


@dataclass(slots=True)
class _Group:
    """A policy token and the `knob=value` tokens that continue it."""

    kind: str
    head: str
    knob_tokens: list[str]


def parse_policies(texts: str | Iterable[str]) -> list[PolicySpec]:
    """Parse one or more `--policies` texts into policy specs, in the order given.

    Raises:
        PolicySpecError: an empty token, an unknown policy, kind or knob, a missing value, or a
            policy given twice.
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    specs = [spec for text in items for group in _group_tokens(text) for spec in _expand(group)]
    if not specs:
        raise PolicySpecError("no policies given")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise PolicySpecError(f"policy '{spec.name}' is given twice")
        seen.add(spec.name)
    return specs


def valid_policies_text() -> str:
    return f"{', '.join(BASELINES)}, static:KNOB=VALUE,..., or grid:KNOB=V1/V2,..."


def _group_tokens(text: str) -> list[_Group]:
    groups: list[_Group] = []
    for raw in text.split(","):
        token = raw.strip()
        if not token:
            raise PolicySpecError(f"empty policy in {text!r}")
        if ":" in token:
            kind, _, rest = token.partition(":")
            kind = kind.strip()
            if kind not in _KINDS:
                raise PolicySpecError(
                    f"unknown policy kind '{kind}' in {token!r} (valid: {valid_policies_text()})"
                )
            groups.append(_Group(kind, token, [rest.strip()] if rest.strip() else []))
        elif "=" in token:
            if not groups or groups[-1].kind not in _KINDS:
                raise PolicySpecError(
                    f"'{token}' follows no static or grid policy (knob settings continue a "
                    "'static:' or 'grid:' token, e.g. static:router_temperature=0.5)"
                )
            groups[-1].knob_tokens.append(token)
        elif token in BASELINES:
            groups.append(_Group("baseline", token, []))
        elif token in ADAPTIVE:
            raise PolicySpecError(
                f"'{token}' acts every control interval (or needs a search): run it with "
                "`poa-gym eval`, which drives the environment; a sweep runs fixed policies"
            )
        else:
            raise PolicySpecError(f"unknown policy '{token}' (valid: {valid_policies_text()})")
    return groups


def _expand(group: _Group) -> list[PolicySpec]:
    if group.kind == "baseline":
        return [PolicySpec(group.head, "baseline", BASELINES[group.head])]
    settings = _knob_settings(group)
    return _KINDS[group.kind](settings)


def _knob_settings(group: _Group) -> list[tuple[str, str]]:
    """The (knob, value text) pairs of a static or grid policy, checked for names and duplicates."""
    shown = ",".join([group.head, *group.knob_tokens])
    if not group.knob_tokens:
        raise PolicySpecError(f"'{shown}' sets no knob (e.g. {group.kind}:router_temperature=0.5)")
    settings: list[tuple[str, str]] = []
    for token in group.knob_tokens:
        knob, sep, value = (part.strip() for part in token.partition("="))
        if knob not in KNOBS:
            raise PolicySpecError(f"unknown knob '{knob}' in '{shown}' (valid knobs: {', '.join(KNOBS)})")
        if not sep or not value:
            raise PolicySpecError(f"knob '{knob}' in '{shown}' needs a value ({knob}=VALUE)")
        if any(knob == seen for seen, _ in settings):
            raise PolicySpecError(f"knob '{knob}' is set twice in '{shown}'")
        settings.append((knob, value))
    return settings


def static_policy(settings: Sequence[tuple[str, str]]) -> PolicySpec:
    """The KV router with the given knobs fixed; the name lists them in the order given."""
    name = "static:" + ",".join(f"{knob}={value}" for knob, value in settings)
    overrides = ("router.mode=kv", *(f"router.{knob}={value}" for knob, value in settings))
    return PolicySpec(name, "static", overrides)


def _static(settings: list[tuple[str, str]]) -> list[PolicySpec]:
    return [static_policy(settings)]


def _grid(settings: list[tuple[str, str]]) -> list[PolicySpec]:
    axes: list[list[tuple[str, str]]] = []
    for knob, text in settings:
        values = [value.strip() for value in text.split(GRID_SEPARATOR)]
        if not all(values):
            raise PolicySpecError(f"grid knob '{knob}={text}' has an empty value (use {knob}=V1/V2/...)")
        axes.append([(knob, value) for value in values])
    return [static_policy(point) for point in itertools.product(*axes)]


_KINDS: dict[str, Callable[[list[tuple[str, str]]], list[PolicySpec]]] = {
    "static": _static,
    "grid": _grid,
}
