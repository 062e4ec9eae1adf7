"""`poa-gym eval`: one code path for every policy, reproducible per seed, conserving requests."""

from __future__ import annotations

import csv
import json
import math

import pytest

from agents.episodes import EVAL_SEED_BASE, EpisodeSetup, run_episode
from agents.evaluate import SearchPoint, best_point, evaluate, margin_pct
from envs.schedules import ScheduleConfig
from eval.cli import main
from eval.eval_report import write_results

TINY = EpisodeSetup(
    "llama70b-b200-1p5d",
    ScheduleConfig(kind="step", low=32, high=192, at_fraction=0.5),
    num_intervals=4,
    interval_s=2.0,
    warmup_s=4.0,
)


def test_evaluation_is_reproducible_and_independent_of_jobs():
    first = evaluate(TINY, ["default", "knee"], num_seeds=1, jobs=1)
    again = evaluate(TINY, ["default", "knee"], num_seeds=2, jobs=2)
    assert first.seeds == (EVAL_SEED_BASE,)
    assert first.episodes[0][2] == again.episodes[0][2]  # default, first eval seed
    assert first.episodes[1][2] == again.episodes[2][2]  # knee, first eval seed
    assert again.episodes[0][2] != again.episodes[1][2]  # another seed, another episode


def test_knee_controller_is_the_default_router_until_it_leaves_the_below_regime():
    """Common random numbers: with the same knobs, the same seed gives the same interval."""
    default = run_episode(TINY, "default", EVAL_SEED_BASE)
    knee = run_episode(TINY, "knee", EVAL_SEED_BASE)
    assert knee.rows[0].regime == "below"
    for ours, theirs in zip(knee.rows, default.rows, strict=True):
        if ours.regime != "below":
            break
        assert (ours.poa_hat, ours.ttft_p99_s, ours.throughput_rps) == (
            theirs.poa_hat,
            theirs.ttft_p99_s,
            theirs.throughput_rps,
        )


def test_phase_summaries_conserve_finished_requests():
    result = run_episode(TINY, "default", EVAL_SEED_BASE)
    phases = {p.phase: p for p in result.phases}
    finished = sum(row.throughput_rps * TINY.interval_s for row in result.rows)
    assert phases["all"].throughput_rps * TINY.num_intervals * TINY.interval_s == pytest.approx(finished)
    # The step schedule: two intervals at 32 clients (below), two at 192 (saturated).
    assert (phases["below"].num_intervals, phases["saturated"].num_intervals) == (2, 2)
    assert "knee" not in phases
    split = sum(phases[p].throughput_rps * phases[p].num_intervals for p in ("below", "saturated"))
    assert split == pytest.approx(phases["all"].throughput_rps * TINY.num_intervals)


def test_best_static_prefers_the_scenarios_setting_among_equals():
    defaults = {"overlap_score_weight": 1.0, "router_temperature": 0.0}
    search = [
        SearchPoint({"overlap_score_weight": 0.0, "router_temperature": 0.0}, -1.5),
        SearchPoint({"overlap_score_weight": 1.0, "router_temperature": 0.0}, -1.5),
        SearchPoint({"overlap_score_weight": 2.0, "router_temperature": 0.5}, -1.6),
    ]
    assert best_point(search, defaults) == {"overlap_score_weight": 1.0, "router_temperature": 0.0}
    better = [*search, SearchPoint({"overlap_score_weight": 2.0, "router_temperature": 1.0}, -1.4)]
    assert best_point(better, defaults)["router_temperature"] == 1.0


def test_results_files_hold_every_interval_and_parse(tmp_path):
    evaluation = evaluate(TINY, ["default", "p2c"], num_seeds=1, jobs=1)
    write_results(evaluation, tmp_path)
    with (tmp_path / "traces.csv").open() as handle:
        traces = list(csv.DictReader(handle))
    assert len(traces) == 2 * TINY.num_intervals
    assert {"knob_overlap_score_weight", "knob_router_temperature", "poa_hat"} <= set(traces[0])
    payload = json.loads((tmp_path / "summary.json").read_text())
    assert payload["schema_version"] == 1 and payload["policies"] == ["default", "p2c"]
    assert {row["phase"] for row in payload["summary"]} == {"below", "saturated", "all"}


def test_seed_rewards_are_the_episodes_interval_means_and_margins_by_hand(tmp_path):
    """Oracle: traces.csv's rows per policy and seed; the margin is the acceptance's arithmetic."""
    evaluation = evaluate(TINY, ["default", "p2c"], num_seeds=2, jobs=2)
    write_results(evaluation, tmp_path)
    with (tmp_path / "traces.csv").open() as handle:
        traces = list(csv.DictReader(handle))
    payload = json.loads((tmp_path / "summary.json").read_text())
    for policy, values in evaluation.seed_rewards().items():
        for seed, value in zip(evaluation.seeds, values, strict=True):
            rows = [float(r["reward"]) for r in traces if r["policy"] == policy and int(r["seed"]) == seed]
            assert len(rows) == TINY.num_intervals and value == pytest.approx(sum(rows) / len(rows))
        assert payload["seed_rewards"][policy] == values
    # Stop 24's 2P/4D seed 1000000: -0.748 against best-static's -0.883 is 15.3% better.
    assert margin_pct(-0.748, -0.883) == pytest.approx(15.29, abs=0.01)
    assert margin_pct(-2.0, -1.0) == -100.0 and math.isnan(margin_pct(0.5, 0.0))


def test_versus_must_be_an_evaluated_policy(capsys):
    assert main(["eval", "llama70b-b200-1p5d", "--policies", "default", "--versus", "knee"]) == 2
    err = capsys.readouterr().err
    assert "--versus 'knee': not one of --policies (default)" in err and "Traceback" not in err


def test_cli_names_the_bad_policy_and_exits_2(capsys):
    assert main(["eval", "llama70b-b200-1p5d", "--policies", "default,kneee"]) == 2
    assert "unknown policy 'kneee'" in capsys.readouterr().err
    # Dynamo v0.9 has no credit decay: the error says which policy and which knob.
    assert main(["eval", "llama70b-b200-1p5d", "--policies", "credit-decay"]) == 2
    err = capsys.readouterr().err
    assert "policy 'credit-decay'" in err and "overlap_score_credit_decay" in err
    assert main(["eval", "llama70b-b200-1p5d", "--policies", "best-static", "--search", "x=1/2"]) == 2
    assert "not in the action space" in capsys.readouterr().err


def test_a_lever_range_on_the_command_line_fits_a_policy_trained_on_it(capsys):
    from agents.base import PolicyContext
    from agents.episodes import EpisodeSetup
    from agents.registry import resolve
    from envs.schedules import ScheduleConfig
    from eval.eval_cli import _with_levers

    shipped = "ppo:checkpoints/levers-2p4d"  # trained with num_prefill_workers in [1, 4] of a budget of 6
    args = ["eval", "disagg-2p4d-multiturn-budget6", "--policies", shipped, "--levers"]
    assert main([*args, "num_prefill_workers"]) == 2  # the widest range, [1, 5], is not its own
    err = capsys.readouterr().err
    assert "num_prefill_workers [1, 4]" in err and "--levers NAME=LOW:HIGH" in err
    plain = EpisodeSetup("disagg-2p4d-multiturn-budget6", ScheduleConfig())
    setup = _with_levers(plain, "num_prefill_workers=1:4")
    assert setup.knobs[-1] == ("num_prefill_workers", 1.0, 4.0)
    resolve(shipped).build(PolicyContext.from_env(setup.env()))


@pytest.mark.parametrize(
    ("lever", "message"),
    [
        ("num_prefill_workers=1:9", "must lie in [1, 5] (scaling.max_workers 6"),
        ("num_prefill_workers=2", "a range is LOW:HIGH"),
        ("num_prefill_workers=3:2", "LOW must be below HIGH"),
        ("prefill_workers=1:2", "unknown lever 'prefill_workers'"),
    ],
)
def test_a_bad_lever_range_is_refused_with_the_rule(capsys, lever, message):
    assert main(["eval", "disagg-2p4d-multiturn-budget6", "--levers", lever]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_reward_setting_scores_every_interval_by_it(tmp_path):
    """A twin evaluation, once with the ITL hinge: each interval's reward is lower by exactly the
    hinge on that interval's own ITL P99 (traces.csv), and nothing else differs."""
    common = ["eval", "llama70b-b200-1p5d", "--policies", "default", "--seeds", "1", "--intervals", "4"]
    common += ["--interval-s", "2", "--warmup-s", "4", "--no-plots", "--jobs", "1"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    hinge = ["--reward", "itl_weight=3", "--reward", "itl_slo_s=0.005"]
    assert main([*common, *hinge, "--out", str(tmp_path / "hinged")]) == 0
    rows = {}
    for name in ("plain", "hinged"):
        with (tmp_path / name / "traces.csv").open() as handle:
            rows[name] = list(csv.DictReader(handle))
    assert len(rows["plain"]) == 4
    for plain, hinged in zip(rows["plain"], rows["hinged"], strict=True):
        itl_p99_s = float(plain["itl_p99_s"])
        expected = float(plain["reward"]) - 3.0 * max(0.0, math.log10(itl_p99_s / 0.005))
        assert float(hinged["reward"]) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        hinged.pop("reward"), plain.pop("reward")
        assert hinged == plain


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("itl_wieght=2", "expected KEY=VALUE with KEY one of"),
        ("itl_weight", "expected KEY=VALUE"),
        ("itl_weight=lots", "'lots' is not a number"),
        ("itl_slo_s=0", "reward itl_slo_s must be > 0"),
    ],
)
def test_a_bad_reward_setting_is_refused_with_the_rule(capsys, setting, message):
    assert main(["eval", "llama70b-b200-1p5d", "--reward", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
