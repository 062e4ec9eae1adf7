"""The live P/D lever's refusals, without a deployment: which records `check_movable` refuses and
why, and an exported lever policy whose range does not fit a deployment's budget (the shipped
lever policies, each on the smallest budget its range fits and on one worker fewer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.onnx_policy import OnnxPolicy
from agents.sidecar.pd_lever import PoolMover
from envs.errors import UserError
from envs.live.deploy import Deployment
from envs.live.pools import PoolError, check_movable
from envs.sim.knobs import KnobRange

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SPLIT = ["frontend", "prefill-worker-0", "prefill-worker-1", "decode-worker-0"]


def _deployment(tmp_path: Path, names: list[str], max_workers: int | None) -> Deployment:
    processes = [{"name": name, "pid": 0, "argv": [], "log": ""} for name in names]
    return Deployment(str(tmp_path), "m", "http://f", "http://c", processes, max_workers=max_workers)


def test_a_split_deployment_with_a_budget_can_move_and_its_budget_is_the_scenarios(tmp_path):
    assert check_movable(_deployment(tmp_path, SPLIT, 6)) == 6


@pytest.mark.parametrize(
    ("names", "max_workers", "says"),
    [
        (["frontend", "workers"], 4, "no prefill workers"),
        (["frontend", "prefill-workers", "decode-workers"], 6, "--split-workers"),
        (SPLIT, None, "scaling.max_workers"),
        (SPLIT, 2, "at 3 or more"),
    ],
)
def test_a_deployment_that_cannot_move_is_refused_with_the_reason(tmp_path, names, max_workers, says):
    with pytest.raises(PoolError, match=r"deployment\.json") as error:
        check_movable(_deployment(tmp_path, names, max_workers))
    assert says in str(error.value)
    assert isinstance(error.value, UserError)  # shown without a traceback


@pytest.mark.parametrize(
    ("name", "high", "smallest_budget"),
    [("levers-multiturn", 5, 6), ("levers-2p4d", 4, 5)],  # trained on [1, 5] and [1, 4] of six
)
def test_an_exported_lever_policy_outside_the_budget_is_refused_with_its_range(
    tmp_path, name, high, smallest_budget
):
    export = CHECKPOINTS / name / "export"
    knobs = tuple(KnobRange(k.name, k.low, k.high) for k in OnnxPolicy.load(export).knobs)
    assert KnobRange("num_prefill_workers", 1.0, float(high)) in knobs
    PoolMover(tmp_path, budget=smallest_budget, lever_every=6).check_range(knobs, str(export))
    with pytest.raises(
        UserError, match=rf"num_prefill_workers range \[1, {high}\] must lie in \[1, {high - 1}\]"
    ):
        PoolMover(tmp_path, budget=smallest_budget - 1, lever_every=6).check_range(knobs, str(export))
