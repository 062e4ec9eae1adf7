"""A request that can never start stops the run with the rule it breaks; one that waits for blocks
held by hand-offs sleeps until they are released instead of spinning at one instant.

Oracles: the rule's boundary (a prompt of exactly the pass budget still runs without chunked
prefill), and for the waiting case a capacity bound worked out by hand: a 40-block prefill pool
holds at most floor(40 / 16) = 2 prompts of 16 blocks, each held for its prefill plus its KV
transfer, so no more than 2 prompts are ever between prefill start and transfer end.
"""

from __future__ import annotations

import pytest

from envs.errors import ScenarioError, UserError
from envs.sim.config import (
    EngineConfig,
    KvTransferConfig,
    ScenarioConfig,
    TopologyConfig,
    WorkloadConfig,
)
from envs.sim.run import simulate
from tests.test_cli_errors import assert_user_error, run_cli, write_scenario

BLOCK = 64


def one_worker(engine: EngineConfig, isl_tokens: int) -> ScenarioConfig:
    return ScenarioConfig(
        duration_s=5.0,
        topology=TopologyConfig(mode="agg", num_workers=1),
        engine=engine,
        workload=WorkloadConfig(rate_rps=4.0, num_requests=6, isl_tokens=isl_tokens, osl_tokens=4),
    )


def test_a_prompt_over_the_pass_budget_without_chunking_is_a_scenario_error():
    engine = EngineConfig(block_size=BLOCK, max_num_batched_tokens=512, enable_chunked_prefill=False)
    with pytest.raises(ScenarioError) as caught:
        simulate(one_worker(engine, isl_tokens=513))
    assert isinstance(caught.value, UserError)
    for fragment in (
        "agg worker 0",
        "513-token prompt",
        "enable_chunked_prefill",
        "max_num_batched_tokens is 512",
    ):
        assert fragment in str(caught.value)


def test_a_prompt_of_exactly_the_pass_budget_runs_without_chunking():
    engine = EngineConfig(block_size=BLOCK, max_num_batched_tokens=512, enable_chunked_prefill=False)
    assert len(simulate(one_worker(engine, isl_tokens=512)).records) == 6


def test_a_sequence_over_the_block_pool_is_a_scenario_error():
    engine = EngineConfig(block_size=BLOCK, num_gpu_blocks=8, max_num_seqs=8)
    with pytest.raises(
        ScenarioError, match=r"needs 9 KV blocks of 64 tokens, over engine.num_gpu_blocks \(8\)"
    ):
        simulate(one_worker(engine, isl_tokens=8 * BLOCK + 1))  # 513 + 4 outputs: 9 blocks


def test_the_cli_names_the_file_the_field_and_the_rule(tmp_path):
    path = write_scenario(
        tmp_path, engine="{max_num_batched_tokens: 128, max_num_seqs: 16, enable_chunked_prefill: false}"
    )
    result = run_cli("simulate", str(path))  # the base workload sends 128-token prompts: they fit
    assert result.returncode == 0, result.stderr
    path = write_scenario(
        tmp_path, engine="{max_num_batched_tokens: 64, max_num_seqs: 16, enable_chunked_prefill: false}"
    )
    assert_user_error(run_cli("simulate", str(path)), str(path), "enable_chunked_prefill", "128-token prompt")


@pytest.mark.timeout(60)  # before the fix the worker spun at one instant forever
def test_a_prompt_waiting_for_handed_over_blocks_sleeps_until_they_are_released():
    isl_tokens = 16 * BLOCK
    scenario = ScenarioConfig(
        duration_s=4.0,
        topology=TopologyConfig(
            mode="disagg",
            num_prefill_workers=1,
            num_decode_workers=2,
            # 1024 tokens x 131072 bytes/token (the default model) at 0.05 GB/s: 2.68 s per transfer.
            kv_transfer=KvTransferConfig(bandwidth_gbps=0.05),
            prefill_engine=EngineConfig(block_size=BLOCK, num_gpu_blocks=40),
        ),
        engine=EngineConfig(block_size=BLOCK),
        workload=WorkloadConfig(rate_rps=20.0, num_requests=10, isl_tokens=isl_tokens, osl_tokens=4),
    )
    result = simulate(scenario)
    assert len(result.records) == 10  # every request finishes: none is lost to a stuck worker
    transfer_s = isl_tokens * scenario.model.kv_bytes_per_token / 0.05e9
    spans = [(r.prefill_start_s, r.transfer_end_s) for r in result.records]
    for start_s, _ in spans:
        holding = sum(1 for s, e in spans if s <= start_s < e)
        assert holding <= 2, (start_s, holding)
    assert all(end_s - start_s >= transfer_s for start_s, end_s in spans)
    # Two at a time, each for at least one transfer: the last transfer ends after 5 of them.
    assert max(end_s for _, end_s in spans) >= 5 * transfer_s
