"""The ONNX graph of an exported policy: torch's exporter, quietened, its output checked and
stripped of the exporting machine's file paths. SB3's and RLlib's exports both go through it."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

# The torch.export-based exporter (torch 2.13's default) implements opset 18 and up; asking it for
# 17 sends the graph through a version down-converter. onnxruntime has run opset 18 since 1.14.
OPSET = 18
INPUT_NAME = "observation"
OUTPUT_NAME = "action"


def write_actor_onnx(actor: torch.nn.Module, num_features: int, path: Path) -> None:
    """Export `actor` (normalised observation batch -> action batch in [-1, 1]) and check it;
    SB3's and RLlib's policies both go through here."""
    example = torch.zeros((2, num_features), dtype=torch.float32)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            actor,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        program.save(str(path))
    _drop_stack_traces(path)
    onnx.checker.check_model(str(path), full_check=True)


def _drop_stack_traces(path: Path) -> None:
    """torch's exporter records each node's stack trace: the exporting machine's file paths."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (it warns that torchvision is absent, and about its own
    internals); failures still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def default_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
