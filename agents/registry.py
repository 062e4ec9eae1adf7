"""Policies by name, as `poa-gym eval --policies` takes them (`poa-gym sweep` takes the fixed
ones too: `agents.policy_spec.NAMED_FIXED`; knee and best-static need eval's control loop).

A named policy is two things: scenario overrides (the router mode, or a startup-only knob such
as Dynamo's `overlap_score_credit_decay`) and a knob policy that acts every interval. Classic
routers ignore the knobs, so their knob policy is the static default.

    default          Dynamo's KV router with the scenario's knobs (its defaults unless the
                     scenario sets them)
    credit-decay     the same, with Dynamo 1.6.1's built-in load-adaptive overlap credit decay
                     (`overlap_score_credit_decay`, startup-only; not in v0.9)
    best-static      the best fixed knob setting of a grid search on training seeds
    knee             the paper's knee-detection controller (agents/knee.py)
    planner, planner-latency
                     Dynamo's own load-based Planner moving workers between the pools
                     (throughput or latency target; agents/planner.py), the scenario's knobs
    round-robin, random, p2c, least-loaded          Dynamo's load-based routers
    cache-aware, llm-d                              SGLang's and llm-d's routers
    static:KNOB=V[,KNOB=V...]                       fixed knob values
    ppo:PATH                                        a trained policy: a checkpoint folder after
                                                    `poa-gym export PATH`, or its export folder
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agents.base import Policy, PolicyContext, StaticPolicy
from agents.knee import KneeController
from agents.planner import PlannerTarget, planner_policy
from agents.policy_spec import BASELINES, NAMED_FIXED, PolicySpecError
from envs.sim.config import ScenarioConfig
from envs.sim.scaling import ScalingPolicy

ROUTER_MODES: tuple[str, ...] = ("round-robin", "random", "p2c", "least-loaded", "cache-aware", "llm-d")
PLANNERS: dict[str, PlannerTarget] = {"planner": "throughput", "planner-latency": "latency"}
NAMED: tuple[str, ...] = ("default", "credit-decay", "best-static", "knee", *PLANNERS, *ROUTER_MODES)


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    """A policy of an evaluation: its name, its scenario overrides, and how to build its knob
    policy once the environment (and so the knob space) is known. `search` marks best-static,
    whose values come from a grid search before it can be built."""

    name: str
    overrides: tuple[str, ...]
    build: Callable[[PolicyContext], Policy]
    search: bool = False
    # Moves workers between the pools while the episode runs (the environment's scaling hook).
    scaling: Callable[[ScenarioConfig], ScalingPolicy] | None = None


def resolve(name: str) -> NamedPolicy:
    """The named policy, or a clear error listing the valid names.

    Raises:
        PolicySpecError: an unknown name, or a malformed `static:` policy.
    """
    name = name.strip()
    if name in NAMED_FIXED:
        return NamedPolicy(name, NAMED_FIXED[name], _default)
    if name == "best-static":
        return NamedPolicy(name, ("router.mode=kv",), _default, search=True)
    if name == "knee":
        return NamedPolicy(name, ("router.mode=kv",), lambda context: KneeController(context))
    if name in PLANNERS:
        target = PLANNERS[name]
        return NamedPolicy(name, ("router.mode=kv",), _default, scaling=lambda s: planner_policy(s, target))
    if name == "random":
        return NamedPolicy(name, BASELINES["random"], _default)
    if name.startswith("static:"):
        values = _static_values(name)
        return NamedPolicy(name, ("router.mode=kv",), lambda context: StaticPolicy(name, context, values))
    if name.startswith("ppo:"):
        return _ppo(name)
    raise PolicySpecError(f"unknown policy '{name}' (valid: {', '.join(NAMED)}, static:KNOB=V,..., ppo:PATH)")


def split_names(text: str) -> list[str]:
    """Comma-separated names; a `knob=value` token continues the `static:` policy before it."""
    names: list[str] = []
    for raw in text.split(","):
        token = raw.strip()
        if not token:
            raise PolicySpecError(f"empty policy in {text!r}")
        if "=" in token and ":" not in token and names and names[-1].startswith("static:"):
            names[-1] += "," + token
        else:
            names.append(token)
    if len(set(names)) != len(names):
        raise PolicySpecError(f"a policy is given twice in {text!r}")
    return names


def _default(context: PolicyContext) -> Policy:
    return StaticPolicy("default", context, {})  # every knob at the scenario's value


def _ppo(name: str) -> NamedPolicy:
    """A trained policy from its ONNX export; the files are checked now so that the CLI fails fast,
    and loaded in `build` (eval's worker processes resolve the name again and build their own)."""
    from agents.onnx_policy import find_export_dir  # onnxruntime loads only for ppo: policies

    path = name.removeprefix("ppo:").strip()
    if not path:
        raise PolicySpecError(f"'{name}': needs a path, ppo:CHECKPOINT_DIR or ppo:EXPORT_DIR")
    if not Path(path).is_dir():
        raise PolicySpecError(
            f"'{name}': no such directory {path} (a checkpoint folder after `poa-gym export {path}`, "
            "or its export folder)"
        )
    if find_export_dir(path) is None:
        raise PolicySpecError(
            f"'{name}': no exported policy in {path} (policy.json there or in export/); "
            f"run `poa-gym export {path}` first"
        )

    def build(context: PolicyContext) -> Policy:
        from agents.onnx_policy import OnnxPolicy

        try:
            policy = OnnxPolicy.load(path, name=name)
        except (OSError, ValueError) as error:
            raise PolicySpecError(f"'{name}': {error}") from None
        try:
            policy.check_matches(context.knobs, context.feature_names)
        except ValueError as error:  # its message starts with the policy's name already
            raise PolicySpecError(str(error)) from None
        return policy

    return NamedPolicy(name, ("router.mode=kv",), build)


def _static_values(name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for token in name.removeprefix("static:").split(","):
        knob, sep, text = (part.strip() for part in token.partition("="))
        if not sep or not knob:
            raise PolicySpecError(f"'{name}': expected KNOB=VALUE, got {token!r}")
        try:
            values[knob] = float(text)
        except ValueError:
            raise PolicySpecError(f"'{name}': knob {knob} needs a number, got {text!r}") from None
    return values
