"""`eval.bench_env`: the environment speed benchmark returns consistent, positive figures."""

from __future__ import annotations

from eval.bench_env import bench_env, format_env_bench


def test_bench_env_reports_consistent_positive_figures() -> None:
    result = bench_env("llama70b-b200-1p2d", concurrency=8, num_steps=2, repeats=1)
    assert result.scenario == "llama70b-b200-1p2d"
    assert (result.concurrency, result.num_steps, result.repeats) == (8, 2, 1)
    assert result.interval_s > 0 and result.wall_s > 0
    assert result.num_requests > 0
    assert result.steps_per_s == result.num_steps / result.wall_s
    assert result.sim_requests_per_s == result.num_requests / result.wall_s
    text = format_env_bench(result)
    assert "steps/s" in text and result.scenario in text
