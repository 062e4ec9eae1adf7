"""Policies on hand-built observations: static actions, names, and the knee controller's regimes.

The knee controller is driven by a synthetic TTFT P99 curve whose EWMA we compute by hand, so
every switch (and every switch that must not happen) is checked against a known ratio.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.base import PolicyContext, StaticPolicy
from agents.knee import REGIMES, KneeConfig, KneeController, KneeState, table2
from agents.policy_spec import PolicySpecError, parse_policies
from agents.registry import NAMED, resolve, split_names
from envs.observation import ObservationConfig
from envs.sim.knobs import KnobRange, action_to_override

V09 = (KnobRange("overlap_score_weight", 0.0, 2.0), KnobRange("router_temperature", 0.0, 1.0))
V16 = (
    KnobRange("overlap_score_credit", 0.0, 2.0),
    KnobRange("prefill_load_scale", 0.0, 2.0),
    KnobRange("router_temperature", 0.0, 1.0),
)
DEFAULTS = {
    "overlap_score_weight": 1.0,
    "overlap_score_credit": 1.0,
    "prefill_load_scale": 1.0,
    "router_temperature": 0.0,
}


def context(knobs=V09) -> PolicyContext:
    names = ObservationConfig(tuple(k.name for k in knobs), history_len=2).feature_names
    return PolicyContext(knobs, names, DEFAULTS)


def observation(ctx: PolicyContext, ttft_p99_s: float) -> np.ndarray:
    vector = np.zeros(len(ctx.feature_names), dtype=np.float32)
    vector[ctx.index("ttft_p99_log10_s")] = math.log10(ttft_p99_s)
    return vector


def knobs_of(ctx: PolicyContext, action: np.ndarray) -> dict[str, float]:
    return {k: round(v, 6) for k, v in action_to_override(action, ctx.knobs).items()}


def test_static_policy_sets_its_values_and_keeps_the_rest_at_the_scenarios():
    ctx = context(V16)
    policy = StaticPolicy("s", ctx, {"router_temperature": 0.5})
    action, state = policy.predict(observation(ctx, 0.1))
    assert state is None
    assert knobs_of(ctx, action) == {
        "overlap_score_credit": 1.0,
        "prefill_load_scale": 1.0,
        "router_temperature": 0.5,
    }
    batch, _ = policy.predict(np.stack([observation(ctx, 0.1)] * 3))
    assert batch.shape == (3, 3) and np.array_equal(batch[2], action)


def test_static_policy_rejects_a_knob_outside_the_action_space():
    with pytest.raises(ValueError, match="overlap_score_weight"):
        StaticPolicy("s", context(V16), {"overlap_score_weight": 1.0})


def test_table2_speaks_the_action_spaces_release():
    assert table2(("overlap_score_weight", "router_temperature"))["saturated"] == {
        "overlap_score_weight": 0.1,
        "router_temperature": 0.8,
    }
    # Under 1.6.1 the v0.9 weight is prefill_load_scale; the credit is not in the table.
    assert table2(tuple(k.name for k in V16))["saturated"] == {
        "prefill_load_scale": 0.1,
        "router_temperature": 0.8,
    }


def ewma(values: list[float], alpha: float) -> list[float]:
    smoothed = [values[0]]
    for value in values[1:]:
        smoothed.append(alpha * value + (1 - alpha) * smoothed[-1])
    return smoothed


def test_knee_controller_climbs_and_descends_with_hysteresis_on_a_synthetic_curve():
    """alpha 1 makes the EWMA the signal itself, so the ratios are the curve over 0.1 s."""
    config = KneeConfig(ewma_alpha=1.0, dwell_polls=2)
    ctx = context()
    controller = KneeController(ctx, config)
    # ratio:   1    1    1.3  1.6  1.6  3.5  3.5  2.6  2.6  1.3  1.3  1.1  1.1
    curve_s = [0.1, 0.1, 0.13, 0.16, 0.16, 0.35, 0.35, 0.26, 0.26, 0.13, 0.13, 0.11, 0.11]
    expected = [
        "below",  # baseline 0.1
        "below",
        "below",  # 1.3 < 1.5: still below
        "below",  # 1.6 >= 1.5 points to transition: first poll of the dwell
        "transition",  # second poll: switch
        "transition",  # 3.5 >= 3: first poll
        "saturated",
        "saturated",  # 2.6 >= 0.8 * 3 = 2.4: hysteresis holds saturation
        "saturated",
        "saturated",  # 1.3 < 2.4 points to transition (1.3 >= 0.8 * 1.5): first poll
        "transition",
        "transition",  # 1.1 < 1.2 points to below: first poll
        "below",
    ]
    seen = []
    for i, ttft_s in enumerate(curve_s):
        action, _ = controller.predict(observation(ctx, ttft_s), episode_start=np.array([i == 0]))
        seen.append(controller.regime())
        assert knobs_of(ctx, action) == pytest.approx(table2(ctx.knob_names)[seen[-1]])
    assert seen == expected


def test_knee_controller_ignores_a_single_spike():
    ctx = context()
    controller = KneeController(ctx, KneeConfig(ewma_alpha=1.0, dwell_polls=2))
    for ttft_s in (0.1, 0.1, 0.5, 0.1, 0.1):
        controller.predict(observation(ctx, ttft_s))
        assert controller.regime() == "below"


def test_knee_ewma_and_baseline_match_a_hand_computation():
    config = KneeConfig(ewma_alpha=0.3)
    curve_s = [0.1, 0.08, 0.2, 0.3, 0.3, 0.3]
    smoothed = ewma(curve_s, 0.3)
    state = KneeState()
    regimes = []
    for i, ttft_s in enumerate(curve_s):
        regimes.append(REGIMES[state.poll(ttft_s, config)])
        assert state.ewma_s == pytest.approx(smoothed[i])
    # The baseline is the lowest smoothed value seen below saturation: 0.1*0.7 + 0.08*0.3 = 0.094.
    assert state.baseline_s == pytest.approx(0.094)
    # Ratios 1.06, 1, 1.34, 1.89, 2.29, 2.56: 1.5 is first reached at poll 3, the switch follows
    # at poll 4 (dwell 2), and 3 is never reached.
    ratios = [s / 0.094 for s in smoothed]
    assert ratios[2] < 1.5 <= ratios[3] and max(ratios) < 3
    assert regimes == ["below"] * 4 + ["transition"] * 2


def test_knee_controller_keeps_one_state_per_environment_and_restarts_on_episode_start():
    ctx = context()
    controller = KneeController(ctx, KneeConfig(ewma_alpha=1.0, dwell_polls=1))
    hot, cold = observation(ctx, 0.4), observation(ctx, 0.1)
    controller.predict(np.stack([cold, cold]), episode_start=np.array([True, True]))
    controller.predict(np.stack([hot, cold]), episode_start=np.array([False, False]))
    assert [controller.regime(0), controller.regime(1)] == ["saturated", "below"]
    controller.predict(np.stack([hot, cold]), episode_start=np.array([True, False]))
    assert controller.regime(0) == "below"  # a new episode: the hot poll is its baseline


def test_knee_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="transition_ratio"):
        KneeConfig(transition_ratio=3.0, saturated_ratio=2.0)
    with pytest.raises(ValueError, match="ewma_alpha"):
        KneeConfig(ewma_alpha=0.0)
    with pytest.raises(ValueError, match="rows"):
        KneeConfig(table={"below": {}})


def test_every_named_policy_resolves_and_unknown_names_are_listed():
    for name in NAMED:
        assert resolve(name).name == name
    assert resolve("p2c").overrides == ("router.mode=power_of_two",)
    assert resolve("credit-decay").overrides[-1] == "router.overlap_score_credit_decay=1.0"
    assert resolve("best-static").search
    with pytest.raises(PolicySpecError, match="valid: default, credit-decay"):
        resolve("kneee")
    with pytest.raises(PolicySpecError, match="needs a number"):
        resolve("static:router_temperature=hot")


def test_split_names_continues_a_static_policy():
    assert split_names("default,static:router_temperature=0.5,overlap_score_weight=0.1,knee") == [
        "default",
        "static:router_temperature=0.5,overlap_score_weight=0.1",
        "knee",
    ]
    with pytest.raises(PolicySpecError, match="twice"):
        split_names("knee,knee")


def test_sweep_takes_the_fixed_named_policies_and_sends_adaptive_ones_to_eval():
    specs = parse_policies("default,credit-decay,p2c,llm-d")
    assert [s.overrides for s in specs] == [
        resolve("default").overrides,
        resolve("credit-decay").overrides,
        ("router.mode=power_of_two",),
        ("router.mode=llm_d",),
    ]
    with pytest.raises(PolicySpecError, match="poa-gym eval"):
        parse_policies("default,knee")
