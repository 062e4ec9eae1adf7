"""Bad input: every validation rule gives a clear message naming the file, the field and the
rule, a non-zero exit status, and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BASE = {
    "name": "t",
    "duration_s": 5,
    "topology": "{mode: agg, num_workers: 1}",
    "workload": "{arrival: poisson, rate_rps: 2, num_requests: 5, isl_tokens: 128, osl_tokens: 4}",
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eval.cli", *args], capture_output=True, text=True, timeout=120
    )


def write_scenario(tmp_path: Path, **fields: str) -> Path:
    data = {**BASE, **fields}
    path = tmp_path / "scenario.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in data.items() if value is not None))
    return path


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def test_valid_scenario_runs(tmp_path: Path) -> None:
    result = run_cli("simulate", str(write_scenario(tmp_path)), "--json")
    assert result.returncode == 0, result.stderr
    assert '"num_requests": 5' in result.stdout


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"engine": "{block_size: 0}"}, "engine.block_size", "greater than 0"),
        ({"engine": "{num_gpu_blocks: -5}"}, "engine.num_gpu_blocks", "greater than 0"),
        ({"topology": "{mode: agg, num_workers: -1}"}, "topology.num_workers", "greater than 0"),
        ({"router": "{overlap_scor_credit: 1.0}"}, "router.overlap_scor_credit", "unknown field"),
        ({"bogus": "1"}, "bogus", "unknown field"),
        ({"engine": "{block_size: sixteen}"}, "engine.block_size", "valid integer"),
        ({"router": "{mode: fastest}"}, "router.mode", "kv"),
        ({"router": "{router_temperature: -1}"}, "router.router_temperature", "greater than or equal to 0"),
        ({"workload": "{arrival: closed_loop, num_requests: 3}"}, "workload", "needs concurrency"),
        ({"engine": "{max_num_seqs: 512, max_num_batched_tokens: 256}"}, "engine", "max_num_batched_tokens"),
        ({"workload": "{arrival: trace}"}, "workload", "needs trace_path"),
        ({"timing": "{kind: profile}"}, "timing", "needs profile_path"),
        ({"duration_s": None, "workload": "{arrival: poisson}"}, "(top level)", "never ends"),
    ],
)
def test_invalid_fields(tmp_path: Path, fields: dict[str, str | None], field: str, rule: str) -> None:
    path = write_scenario(tmp_path, **fields)
    assert_user_error(run_cli("simulate", str(path)), str(path), f"'{field}'", rule)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nengine: {block_size: 16\n")
    assert_user_error(run_cli("simulate", str(path)), str(path), "not valid YAML", "line")


def test_unknown_preset_lists_presets() -> None:
    assert_user_error(run_cli("simulate", "no-such-preset"), "no-such-preset", "paper-70b-1p5d")


def test_bad_set_override() -> None:
    assert_user_error(run_cli("simulate", "agg-4w-prefix", "--set", "router"), "--set", "key=value")
    result = run_cli("simulate", "agg-4w-prefix", "--set", "router.overlap_score_credit=-2")
    assert_user_error(result, "router.overlap_score_credit", "greater than or equal to 0")


@pytest.mark.parametrize(
    ("line", "field", "rule"),
    [
        ('{"timestamp": 0, "output_length": 4, "hash_ids": [1, 2]', "", "not valid JSON"),
        ('{"timestamp": 0, "output_length": 4}', "hash_ids", "non-empty list of integers"),
        ('{"timestamp": 0, "output_length": 0, "hash_ids": [1]}', "output_length", "positive integer"),
        (
            '{"timestamp": 0, "input_length": 2000, "output_length": 4, "hash_ids": [1]}',
            "input_length",
            "exceeds",
        ),
        ('{"timestamp": -5, "output_length": 4, "hash_ids": [1]}', "timestamp", ">= 0"),
        ('{"timestamp": 0, "output_length": 4, "hash_ids": [1], "prompt": "hi"}', "prompt", "unknown field"),
    ],
)
def test_bad_trace_line(tmp_path: Path, line: str, field: str, rule: str) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"timestamp": 0, "output_length": 4, "hash_ids": [7]}\n' + line + "\n")
    path = write_scenario(
        tmp_path,
        duration_s=None,
        workload="{arrival: trace, trace_path: trace.jsonl, trace_block_tokens: 512}",
    )
    fragments = [f"{trace}:2", rule] + ([f"'{field}'"] if field else [])
    assert_user_error(run_cli("simulate", str(path)), *fragments)


def test_missing_trace_file(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, duration_s=None, workload="{arrival: trace, trace_path: nowhere.jsonl}")
    assert_user_error(run_cli("simulate", str(path)), "nowhere.jsonl", "cannot read")


def test_missing_profile_file(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, timing="{kind: profile, profile_path: none.npz}")
    assert_user_error(run_cli("simulate", str(path)), "none.npz", "profile")


def test_bad_grid_name() -> None:
    assert_user_error(run_cli("crosscheck", "--grid", "nope"), "unknown grid", "default")
