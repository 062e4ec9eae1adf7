"""`PoAGym/DisaggRouting-v0`: an agent sets Dynamo's router knobs every control interval.

## Description
A simulated Dynamo deployment (`envs.sim`, calibrated timing) serves closed-loop clients whose
number follows a load schedule that crosses the saturation knee. Every `interval_s` of simulated
time the agent sees what Dynamo's frontend exposes on `/metrics` and chooses the router knobs
that every request arriving in the next interval is routed with (Dynamo's per-request
`router_config_override`).

## Action space
`Box(-1, 1, (k,), float32)`: knob i is `low_i + (a_i + 1) / 2 * (high_i - low_i)` (`envs.sim.knobs`).
Default knobs: `overlap_score_credit` [0, 8], `prefill_load_scale` [0, 8], `router_temperature`
[0, 1] (Dynamo 1.6.1); for `router_semantics: dynamo-0.9` scenarios, `overlap_score_weight`
[0, 2] and `router_temperature` [0, 1]. Configurable with `knobs`, which may add the lever
`num_prefill_workers` (`envs.levers`): the prefill pool's share of `scaling.max_workers`, moved
every `lever_every` intervals with Dynamo's start-up and drain costs; and the lever
`active_prefill_tokens_threshold_frac`, Dynamo's busy threshold, set every interval (the top of
its range is no shedding; requests turned away are counted in `info["num_rejected"]`).

## Observation space
`Box(-inf, inf, (n,), float32)` built by `envs.observation` (schema v1) from two metrics
snapshots: TTFT and ITL P50/P99 of the interval (log10 s), TTFT trend, throughput (log1p req/s),
output tokens (log1p tok/s), in-flight and queued requests (log1p), the queued fraction, KV hit
rate (fraction), decode KV utilisation (fraction) and imbalance, prefill tokens (log1p) and
imbalance, a no-completions flag, the last action, and the last `history_len` intervals' TTFT P99
and throughput. `info["feature_names"]` (at reset) names every entry.

## Rewards
`envs.reward`: -ln PoA-hat - log10(TTFT P99 / 0.1 s), minus a steep penalty when throughput
(decode tokens/s) falls more than 3% below the default router's at the same load; optionally
(`reward: {itl_weight: W, itl_slo_s: S}`) minus W log10(ITL P99 / S) past an ITL SLO. Terms in
`info["reward_terms"]`.

## Starting state
`reset(seed)` picks a scenario and a schedule (uniformly, from `scenarios` and `schedules`),
draws the simulation seed, and simulates `warmup_s` with the scenario's own knobs; the first
observation describes the last `interval_s` of that warm-up.

## Episode end
Never terminates; truncates after `num_intervals` steps (default 60: five simulated minutes).

## Arguments
`gymnasium.make("PoAGym/DisaggRouting-v0", scenario="llama70b-b200-1p5d", ...)`, or one plain
dict `config={...}` (as RLlib passes it) with the `EnvConfig` fields: `scenarios`, `schedules`
(dicts of `envs.schedules.ScheduleConfig`), `interval_s`, `num_intervals`, `warmup_s`, `knobs`
(list of `[name, low, high]`), `history_len`, `reward` (dict of `RewardConfig`), `overrides`
(scenario `key=value` overrides).

## Backends
`backend="sim"` (the default) runs the simulator. `backend="dynamo"` with `live={"workdir": ...}`
(a `poa-gym dynamo up` folder) or `live={"frontend_url", "control_url", "model_name",
"token_file"}` drives a running Dynamo 1.6.1 deployment instead (`envs.live.backend`): same
spaces, same observation builder, same reward (without the throughput term, whose reference is
simulated); one scenario, the one the deployment runs. An unreachable deployment ends the
episode (`truncated`, with the reason in `info["ended"]`).

## Version history
- v0: initial release.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.env_config import EnvConfig
from envs.levers import BUSY_LEVER, LeverDriver, check_levers, lever_defaults
from envs.live.backend import LiveBackend, LiveConfig, Unreachable
from envs.observation import ObservationBuilder, ObservationConfig
from envs.poa import PoaParams, estimate_poa, poa_params_for
from envs.reward import ReferenceThroughput, reward_terms
from envs.scenarios import load_inputs, load_scenario
from envs.schedules import concurrency_levels
from envs.sim.busy import BusyThresholds
from envs.sim.config import LoadStep, ScenarioConfig
from envs.sim.knobs import (
    LEVERS,
    RELEASE_KNOBS,
    action_to_override,
    check_knobs,
    default_knobs,
    knob_values,
    override_to_action,
    split_levers,
)
from envs.sim.metrics import summarize
from envs.sim.profile_arrays import ProfileArrays
from envs.sim.run import build_cluster, random_streams
from envs.sim.scaling import ScalingPolicy
from envs.sim_metrics import SimMetrics

ENV_ID = "PoAGym/DisaggRouting-v0"


@dataclass(frozen=True, slots=True)
class _LoadedScenario:
    scenario: ScenarioConfig
    profile: ProfileArrays | None
    poa: PoaParams
    reference: ReferenceThroughput


class DisaggRoutingEnv(gym.Env):
    __doc__ = __doc__
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, config: EnvConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if config is None or isinstance(config, Mapping):
            config = EnvConfig.from_dict({**(config or {}), **kwargs})
        elif kwargs:
            config = EnvConfig.from_dict({**_as_dict(config), **kwargs})
        self.config = config
        self._loaded = [self._load(name) for name in config.scenarios]
        first_router = self._loaded[0].scenario.router
        self.knobs = config.knobs or default_knobs(first_router)
        for loaded in self._loaded:
            check_knobs(self.knobs, loaded.scenario.router)
            check_levers(self.knobs, loaded.scenario)
        self._levers = LeverDriver(config.lever_every, self.knobs)
        # Requests turned away are counted in `info` where a busy threshold can turn one away.
        self._can_reject = config.backend == "sim" and (
            any(k.name == BUSY_LEVER for k in self.knobs)
            or any(BusyThresholds.of(loaded.scenario.router).enabled for loaded in self._loaded)
        )
        self._scaling_factory: Callable[[ScenarioConfig], ScalingPolicy] | None = None
        self._scaling: ScalingPolicy | None = None
        self.obs_config = ObservationConfig(tuple(k.name for k in self.knobs), config.history_len)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(self.knobs),), np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_config.size,), np.float32)
        self._builder = ObservationBuilder(self.obs_config)
        self._cluster = None
        self._live = self._connect(config) if config.backend == "dynamo" else None

    def _connect(self, config: EnvConfig) -> LiveBackend:
        if any(k.name in LEVERS for k in self.knobs):
            raise ValueError(f"backend 'dynamo': levers ({', '.join(LEVERS)}) are simulator-only so far")
        live = LiveBackend(config.live or LiveConfig())
        # Only the knob router's decisions are visible live (the frontend routes the decode
        # stage itself), so PoA-hat is taken over the stage the knobs act on.
        loaded = self._loaded[0]
        stage = "prefill" if loaded.scenario.topology.mode == "disagg" else "agg"
        self._loaded = [
            dataclasses.replace(loaded, poa=poa_params_for(loaded.scenario, loaded.profile, stage))
        ]
        runs = live.endpoints.scenario
        if runs is not None and runs != self._loaded[0].scenario.name:
            raise ValueError(
                f"backend 'dynamo': the deployment runs {runs}, not {self._loaded[0].scenario.name}; "
                f"start one with `poa-gym dynamo up {self._loaded[0].scenario.name}`"
            )
        return live

    def set_scaling(self, factory: Callable[[ScenarioConfig], ScalingPolicy] | None) -> None:
        """Let a scaling policy (Dynamo's Planner, say) move workers from each episode's start,
        one fresh per episode; it then owns the pools, so the levers stop moving them."""
        self._scaling_factory = factory

    @property
    def default_values(self) -> dict[str, float]:
        """The first scenario's own knob and lever values: what `reset` warms up with."""
        return _own_values(self._loaded[0].scenario)

    @property
    def records(self) -> tuple:
        """Every request record of the episode so far (evaluation summarises them)."""
        if self._live is not None:
            return tuple(self._live_records)
        return tuple(self._cluster.records) if self._cluster is not None else ()

    def _load(self, name: str) -> _LoadedScenario:
        scenario, path = load_scenario(name, list(self.config.overrides))
        if scenario.workload.arrival == "trace":
            raise ValueError(
                f"{name}: the environment drives closed-loop clients; trace arrivals are not supported yet"
            )
        profile = load_inputs(scenario, path).profile
        return _LoadedScenario(
            scenario, profile, poa_params_for(scenario, profile), ReferenceThroughput(scenario, profile)
        )

    # -- gymnasium API ----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self._active = self._loaded[int(rng.integers(len(self._loaded)))]
        schedule = self.config.schedules[int(rng.integers(len(self.config.schedules)))]
        self._levels = concurrency_levels(schedule, self.config.num_intervals, rng)
        scenario = self._episode_scenario(int(rng.integers(2**31 - 1)))
        self._step = 0
        default_action = override_to_action(_own_values(scenario), self.knobs)
        if self._live is not None:
            observation = self._reset_live(scenario, default_action)
        else:
            observation = self._reset_sim(scenario, default_action)
        info = {
            "feature_names": self.obs_config.feature_names,
            "scenario": scenario.name,
            "schedule": schedule.kind,
        }
        return observation, info

    def _reset_sim(self, scenario: ScenarioConfig, default_action: np.ndarray) -> np.ndarray:
        self._cluster = build_cluster(scenario, profile=self._active.profile)
        self._close_scaling()
        if self._scaling_factory is not None:
            self._scaling = self._scaling_factory(scenario)
            self._cluster.scaler.run(self._scaling)
        self._metrics = SimMetrics(self._cluster)
        warmup_s = self.config.warmup_s
        if warmup_s > self.config.interval_s:
            self._cluster.env.run(until=warmup_s - self.config.interval_s)
        self._builder.reset(self._metrics.snapshot())
        self._cluster.env.run(until=warmup_s)
        self._records_seen = len(self._cluster.records)
        self._rejections_seen = len(self._cluster.rejections)
        self._tokens_seen = self._cluster.num_decode_tokens
        return self._builder.build(self._metrics.snapshot(), default_action)

    def _reset_live(self, scenario: ScenarioConfig, default_action: np.ndarray) -> np.ndarray:
        live, warmup_s = self._live, self.config.warmup_s
        live.set_knobs(knob_values(scenario.router, RELEASE_KNOBS["dynamo-1.6"]))
        live.start(scenario, random_streams(scenario.seed)["sessions"], self._levels[0])
        live.wait_until(warmup_s - self.config.interval_s)
        self._snapshot = live.snapshot()
        self._builder.reset(self._snapshot)
        live.wait_until(warmup_s)
        self._snapshot = live.snapshot()
        self._context = live.finished()
        self._live_records = list(self._context)
        self._observation = self._builder.build(self._snapshot, default_action)
        return self._observation

    def step(self, action: np.ndarray):
        if self._cluster is None and self._live is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(-1), -1.0, 1.0)
        override = action_to_override(action, self.knobs)
        start_s = self.config.warmup_s + self._step * self.config.interval_s
        if self._live is not None:
            try:
                observation, finished, context, decode_tok_s = self._step_live(override, action, start_s)
            except Unreachable as error:
                return self._observation, 0.0, False, True, {"ended": str(error), "knobs": override}
        else:
            observation, finished, context, decode_tok_s = self._step_sim(override, action, start_s)
        poa = estimate_poa(
            context,
            self._active.poa,
            start_s=min((d.time_s for r in finished for d in r.decisions), default=start_s),
        )
        concurrency = self._levels[self._step]
        # After a load change new clients wait for their prefill before they decode, for any
        # router, so the reference takes the lower of the two levels: no policy is charged for it.
        previous = self._levels[self._step - 1] if self._step else concurrency
        reference_tok_s = 0.0
        if self.config.reward.throughput_weight and self._live is None:
            reference_tok_s = self._active.reference.at(min(concurrency, previous))
        latency = summarize(finished)
        terms = reward_terms(
            self.config.reward, poa.poa_hat, list(finished), decode_tok_s, reference_tok_s, latency.itl_p99_s
        )
        self._step += 1
        info = {
            "reward_terms": terms,
            "knobs": override,
            "concurrency": concurrency,
            "poa_hat": poa.poa_hat,
            "throughput_rps": len(finished) / self.config.interval_s,
            "decode_tok_s": decode_tok_s,
            "reference_tok_s": reference_tok_s,
            "ttft_p99_s": latency.ttft_p99_s,
            "itl_p99_s": latency.itl_p99_s,
            "num_finished": len(finished),
            "time_s": start_s + self.config.interval_s,
        }
        truncated = self._step >= self.config.num_intervals
        if self._can_reject:
            rejections = self._cluster.rejections
            info["num_rejected"] = len(rejections) - self._rejections_seen
            self._rejections_seen = len(rejections)
        if self._live is not None:
            info["num_failed"] = len(self._live.failures)
            if self._live.failures and not finished:
                info["ended"] = f"every request of the interval failed: {self._live.failures[0].error}"
                truncated = True
        return observation, float(sum(terms.values())), False, truncated, info

    def _step_sim(self, values: dict[str, float], action: np.ndarray, start_s: float):
        override, levers = split_levers(values)
        if self._scaling is not None:  # the scaling policy owns the pools
            levers.pop("num_prefill_workers", None)
        self._levers.apply(self._cluster, levers, self._step)
        self._cluster.set_router_override(override)
        self._cluster.env.run(until=start_s + self.config.interval_s)
        finished = self._cluster.records[self._records_seen :]
        context = self._cluster.records[max(0, self._records_seen - len(finished)) :]
        self._records_seen = len(self._cluster.records)
        observation = self._builder.build(self._metrics.snapshot(), action)
        num_decode_tokens = self._cluster.num_decode_tokens
        decode_tok_s = (num_decode_tokens - self._tokens_seen) / self.config.interval_s
        self._tokens_seen = num_decode_tokens
        return observation, finished, context, decode_tok_s

    def _step_live(self, override: dict[str, float], action: np.ndarray, start_s: float):
        live = self._live
        live.set_knobs(override)
        live.set_clients(self._levels[self._step])
        live.wait_until(start_s + self.config.interval_s)
        snapshot = live.snapshot()
        finished = live.finished()
        context, self._context = [*self._context, *finished], finished
        self._live_records += finished
        elapsed_s = snapshot.time_s - self._snapshot.time_s
        decode_tok_s = (snapshot.output_tokens_total - self._snapshot.output_tokens_total) / elapsed_s
        self._snapshot = snapshot
        self._observation = self._builder.build(snapshot, action)
        return self._observation, finished, context, decode_tok_s

    def close(self) -> None:
        if self._live is not None:
            self._live.close()
        self._close_scaling()
        super().close()

    def _close_scaling(self) -> None:
        if self._scaling is not None and hasattr(self._scaling, "close"):
            self._scaling.close()
        self._scaling = None

    # -- episode construction ---------------------------------------------------------------------

    def _episode_scenario(self, sim_seed: int) -> ScenarioConfig:
        """The active scenario under the episode's schedule: warm-up at the first level, then one
        level per control interval; no new requests after the last interval."""
        config = self.config
        base = self._active.scenario
        # The warm-up and the first interval run at `concurrency`; each later level is a step.
        steps = [
            LoadStep(at_s=config.warmup_s + i * config.interval_s, value=level)
            for i, level in enumerate(self._levels)
            if i
        ]
        workload = dataclasses.replace(
            base.workload,
            arrival="closed_loop",
            concurrency=self._levels[0],
            num_requests=None,
            load_schedule=tuple(steps),
        )
        duration_s = config.warmup_s + config.num_intervals * config.interval_s
        return dataclasses.replace(base, seed=sim_seed, workload=workload, duration_s=duration_s)


def _own_values(scenario: ScenarioConfig) -> dict[str, float]:
    return {**knob_values(scenario.router), **lever_defaults(scenario)}


def _as_dict(config: EnvConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def make_env(config: Mapping[str, Any] | None = None) -> DisaggRoutingEnv:
    """RLlib-style constructor: one plain config dict."""
    return DisaggRoutingEnv(dict(config or {}))
