"""`poa-gym sweep`: policy specs, the steady-state window, the result files and CLI errors.

Oracles: hand-derived policy lists and overrides; hand-built records for the window's counts;
twin sweeps (different --jobs) for byte-identical files; the schema loader for the files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.policy_spec import KNOBS, PolicySpecError, parse_policies
from envs.sim.records import RequestRecord
from eval.cli import main
from eval.sweep import steady_state_summary
from eval.sweep_results import FIELDS, SweepResultsError, load_results

# -- policy specs ---------------------------------------------------------------------------


def test_baselines_map_to_router_modes() -> None:
    specs = parse_policies("round_robin,random,power_of_two,least_loaded,kv")
    assert [s.name for s in specs] == ["round_robin", "random", "power_of_two", "least_loaded", "kv"]
    assert specs[0].overrides == ("router.mode=round_robin",)
    assert specs[4].overrides == ("router.mode=kv",)
    assert {s.kind for s in specs} == {"baseline"}


def test_comma_rule_continues_the_previous_static_policy() -> None:
    specs = parse_policies("static:overlap_score_credit=1,prefill_load_scale=2,round_robin")
    assert [s.name for s in specs] == ["static:overlap_score_credit=1,prefill_load_scale=2", "round_robin"]
    assert specs[0].overrides == (
        "router.mode=kv",
        "router.overlap_score_credit=1",
        "router.prefill_load_scale=2",
    )


def test_repeated_flags_concatenate_in_order() -> None:
    specs = parse_policies(["kv", "static:router_temperature=0.5", "random"])
    assert [s.name for s in specs] == ["kv", "static:router_temperature=0.5", "random"]


def test_grid_expands_to_the_cross_product() -> None:
    specs = parse_policies(
        "grid:router_temperature=0/0.25/0.5/1,overlap_score_weight=0.1/0.5/1/2,round_robin"
    )
    assert len(specs) == 17
    grid = specs[:16]
    assert grid[0].name == "static:router_temperature=0,overlap_score_weight=0.1"
    assert grid[1].name == "static:router_temperature=0,overlap_score_weight=0.5"  # last knob fastest
    assert grid[15].name == "static:router_temperature=1,overlap_score_weight=2"
    assert len({s.name for s in grid}) == 16
    assert grid[15].overrides == (
        "router.mode=kv",
        "router.router_temperature=1",
        "router.overlap_score_weight=2",
    )
    assert specs[16].name == "round_robin"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("static:overlap_scor_credit=1", ["unknown knob 'overlap_scor_credit'", "router_temperature"]),
        ("grid:router_temperature=0/1,bogus=1/2", ["unknown knob 'bogus'", "prefill_load_scale"]),
        ("fastest", ["unknown policy 'fastest'", "round_robin", "static:"]),
        ("nope:a=1", ["unknown policy kind 'nope'"]),
        ("kv,router_temperature=1", ["'router_temperature=1' follows no static or grid policy"]),
        ("kv,,random", ["empty policy"]),
        ("", ["empty policy"]),
        ("static:", ["sets no knob"]),
        ("static:router_temperature=", ["needs a value"]),
        ("static:router_temperature=0,router_temperature=1", ["set twice"]),
        ("grid:router_temperature=0//1", ["empty value"]),
        ("kv,kv", ["'kv' is given twice"]),
    ],
)
def test_bad_policy_specs(text: str, fragments: list[str]) -> None:
    with pytest.raises(PolicySpecError) as error:
        parse_policies(text)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_knobs_are_the_router_fields_but_the_mode() -> None:
    assert "mode" not in KNOBS
    assert {
        "overlap_score_credit",
        "prefill_load_scale",
        "router_temperature",
        "overlap_score_weight",
    } <= set(KNOBS)


# -- steady-state window --------------------------------------------------------------------


def record(
    request_id: int, arrival_s: float, first_s: float, last_s: float, out_tokens: int = 5
) -> RequestRecord:
    return RequestRecord(
        request_id, request_id, 0, arrival_s, 100, out_tokens, 50, 0, 0,
        arrival_s, first_s, first_s, first_s, first_s, last_s, 0, (),
    )  # fmt: skip


def test_window_keeps_arrivals_and_counts_completions_inside() -> None:
    records = [
        record(0, 0.5, 1.0, 3.0),  # warm-up arrival, completes inside: counts for throughput only
        record(1, 2.0, 2.5, 4.5),  # measured and completed inside
        record(2, 4.0, 4.2, 6.0),  # measured, completes after the end
        record(3, 1.9, 2.0, 2.5),  # warm-up arrival, completes inside
    ]
    summary, num_completed = steady_state_summary(records, warmup_s=2.0, duration_s=5.0)
    assert summary.num_requests == 2  # requests 1 and 2
    assert num_completed == 3  # requests 0, 1, 3 end in [2, 5)
    assert summary.throughput_rps == pytest.approx(3 / 3.0)
    assert summary.output_tok_s == pytest.approx(15 / 3.0)
    assert summary.ttft_mean_s == pytest.approx((0.5 + 0.2) / 2)
    # Per-request gaps: (4.5 - 2.5) / 4 and (6.0 - 4.2) / 4, four gaps each.
    assert summary.itl_mean_s == pytest.approx((2.0 + 1.8) / 8)
    assert summary.prefix_reuse_ratio == pytest.approx(0.5)


# -- a tiny sweep ---------------------------------------------------------------------------

TINY = [
    "sweep", "agg-4w-prefix", "--concurrency", "2,4", "--policies", "kv,round_robin", "--seeds", "2",
    "--duration-s", "4", "--warmup-s", "1", "--set", "workload.isl_tokens=512",
]  # fmt: skip


def test_tiny_sweep_writes_valid_deterministic_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main([*TINY, "--jobs", "2", "--out", str(first)]) == 0
    assert main([*TINY, "--jobs", "1", "--out", str(second), "--no-plots"]) == 0

    rows = load_results(first / "results.json")
    assert len(rows) == 2 * 2 * 2
    assert [(r.policy, r.concurrency, r.seed) for r in rows] == [
        (p, c, s) for p in ("kv", "round_robin") for c in (2, 4) for s in (0, 1)
    ]
    assert load_results(first / "results.csv") == rows
    for row in rows:
        assert row.scenario == "agg-4w-prefix"
        assert (row.warmup_s, row.duration_s) == (1.0, 4.0)
        assert row.num_requests > 0 and row.poa_num_windows > 0
        assert row.poa_hat is not None and row.poa_hat > 0

    meta = json.loads((first / "results.json").read_text())
    assert meta["grid"]["seeds"] == [0, 1]
    assert meta["window"] == {"warmup_s": 1.0, "duration_s": 4.0}
    assert "--jobs" not in meta["command"] and "--out" not in meta["command"]
    for name in ("results.json", "results.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    for stem in ("poa_vs_concurrency", "ttft_p99_vs_concurrency", "throughput_vs_concurrency"):
        assert (first / f"{stem}.png").stat().st_size > 0
    assert not (second / "poa_vs_concurrency.png").exists()


def test_loader_rejects_rows_that_break_the_schema(tmp_path: Path) -> None:
    assert main([*TINY[:5], "kv", "--seeds", "1", *TINY[8:], "--out", str(tmp_path), "--no-plots"]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    doc["rows"][0]["concurrency"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(SweepResultsError, match="concurrency"):
        load_results(tmp_path / "bad.json")
    header, *lines = (tmp_path / "results.csv").read_text().splitlines()
    assert tuple(header.split(",")) == FIELDS
    (tmp_path / "bad.csv").write_text("\n".join([header + ",extra", *lines]) + "\n")
    with pytest.raises(SweepResultsError, match="columns"):
        load_results(tmp_path / "bad.csv")


# -- CLI errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--policies", "fastest"], ["--policies", "unknown policy 'fastest'"]),
        (["--policies", "static:bogus=1"], ["--policies", "unknown knob 'bogus'"]),
        (["--policies", ""], ["--policies", "empty policy"]),
        (["--concurrency", "8,x"], ["--concurrency", "'x' is not a positive integer"]),
        (["--concurrency", ""], ["--concurrency", "'' is not a positive integer"]),
        (["--concurrency", "4,4"], ["--concurrency", "given twice"]),
        (["--seeds", "0"], ["--seeds must be >= 1"]),
        (["--warmup-s", "9"], ["--warmup-s 9", "duration_s = 4"]),
    ],
)
def test_cli_errors_name_the_flag(
    flags: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sweep", "agg-4w-prefix", "--concurrency", "2", "--policies", "kv", "--duration-s", "4"]
    assert main([*args, *flags]) == 2
    text = capsys.readouterr().err
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def test_bad_knob_value_fails_before_any_run(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", "agg-4w-prefix", "--concurrency", "2", "--duration-s", "4"]
    assert main([*args, "--policies", "kv,static:router_temperature=-1"]) == 2
    text = capsys.readouterr().err
    assert "--policies static:router_temperature=-1" in text
    assert "router.router_temperature" in text and "greater than or equal to 0" in text


def test_cli_error_exit_status_in_a_subprocess() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval.cli",
            "sweep",
            "agg-4w-prefix",
            "--concurrency",
            "8,x",
            "--policies",
            "kv",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--concurrency" in result.stderr
