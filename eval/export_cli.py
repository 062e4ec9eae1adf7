"""`poa-gym export CHECKPOINT`: a trained policy as policy.onnx + policy.json for the router sidecar.

torch, stable-baselines3 and the simulator load only once the checkpoint folder is known to exist,
so a mistyped path fails fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from envs.errors import UserError

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 180)

# Exported actions are float32 through the same float32 MLP; SB3 and onnxruntime differ by
# rounding only (about 1e-7). A gap past this is a wrong graph, not rounding.
PARITY_TOLERANCE = 1e-5

EPILOG = """\
CHECKPOINT is a training run's folder: model.zip (SB3 PPO), config.yaml (its `env` key builds the
environment, which gives the knobs and observation features) and, if training normalised
observations, vecnormalize.pkl. The export (default CHECKPOINT/export) holds policy.onnx, the
normalised observation -> deterministic action in [-1, 1]^k, and policy.json, with the feature
names, VecNormalize's statistics and the knob ranges. Load it with agents.onnx_policy.OnnxPolicy,
or evaluate it with `poa-gym eval SCENARIO --policies default,ppo:CHECKPOINT`.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="export a trained policy to ONNX (policy.onnx + policy.json) for the router sidecar",
        description="Export a checkpoint's PPO policy to ONNX and check it against stable-baselines3.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a training run's folder (checkpoints/NAME)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: CHECKPOINT/export)")
    parser.add_argument(
        "--samples", type=int, default=512, help="observations for the SB3 vs onnxruntime check (default 512)"
    )
    parser.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    checkpoint_dir: Path = args.checkpoint
    if not checkpoint_dir.is_dir():
        raise UserError(f"{checkpoint_dir}: no such checkpoint directory (a training run's folder)")
    if args.samples < 1:
        raise UserError("--samples must be >= 1")
    from training.export import export_checkpoint, load_checkpoint, parity_max_abs_diff

    with console.status(f"loading {checkpoint_dir}"):
        checkpoint = load_checkpoint(checkpoint_dir)
    with console.status("exporting to ONNX"):
        exported = export_checkpoint(checkpoint, args.out)
    max_diff, num_observations = parity_max_abs_diff(checkpoint, exported.out_dir, args.samples)
    knobs = ", ".join(f"{k.name} [{k.low:g}, {k.high:g}]" for k in checkpoint.knobs)
    normalised = "VecNormalize statistics" if checkpoint.normalization else "no normalisation"
    out.print(f"wrote {exported.onnx_path} (opset {exported.opset}) and {exported.json_path}")
    out.print(f"  {len(checkpoint.feature_names)} features ({normalised}) -> knobs {knobs}")
    out.print(f"  control interval {checkpoint.interval_s:g} s")
    verdict = "ok" if max_diff <= PARITY_TOLERANCE else "[bold red]MISMATCH[/]"
    out.print(
        f"parity: max |SB3 - onnxruntime| = {max_diff:.2e} over {num_observations} observations "
        f"(tolerance {PARITY_TOLERANCE:.0e}): {verdict}"
    )
    return 0 if max_diff <= PARITY_TOLERANCE else 1
