"""`poa-gym train`: the command line of `training.train` (and `training.rllib_train`); the final
test's tables and plots are written by `eval.eval_report`.

Heavy imports (torch, stable-baselines3, the simulator) wait until the flags are checked.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from envs.errors import UserError

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 180)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train a PPO policy of router knobs (SB3), validate it against the knee controller, export it",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", type=Path, help="RL-Zoo-format YAML (default: training/configs/ppo.yaml)")
    parser.add_argument("--timesteps", type=int, help="total environment steps (overrides n_timesteps)")
    parser.add_argument("--n-envs", type=int, help="environments, one process each (overrides n_envs)")
    parser.add_argument("--seed", type=int, help="training seed (overrides the config's)")
    parser.add_argument(
        "--learning-rate",
        type=float,
        help="PPO's learning rate (overrides the config's; with --resume, the resumed model's too)",
    )
    parser.add_argument(
        "--validation-seeds",
        type=int,
        help="validation seeds per check (overrides eval.num_validation_seeds; with --resume, the "
        "selected model is scored again on them first)",
    )
    parser.add_argument("--out", type=Path, default=Path("checkpoints/run"), help="checkpoint directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its snapshot")
    parser.add_argument("--wandb", action="store_true", help="log to W&B (offline without credentials)")
    parser.add_argument("--wandb-project", default="poa-gym", help="W&B project (default: poa-gym)")
    parser.add_argument("--jobs", type=int, default=0, help="evaluation processes (default: one per core)")
    parser.add_argument("--no-test", action="store_true", help="skip the final test on held-out seeds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("RLlib (pip install 'poa-gym[ray]')")
    ray.add_argument("--engine", choices=("sb3", "rllib"), default="sb3", help="the PPO implementation")
    ray.add_argument("--ray-address", help="a Ray cluster (auto or HOST:PORT); default: a local one")
    ray.add_argument("--num-env-runners", type=int, help="RLlib rollout workers (default: n_envs)")
    parser.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from eval.eval_report import write_report
    from training.checkpoint import CONFIG_FILE
    from training.config import load_train_config

    if args.engine == "rllib" and args.resume:
        raise UserError("--resume is for --engine sb3; an RLlib run restarts from its config")
    if args.resume and args.config is not None:
        raise UserError("--resume continues with the run's own config.yaml; drop --config")
    for flag in ("timesteps", "n_envs", "jobs", "validation_seeds"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "jobs" else 1):
            raise UserError(f"--{flag.replace('_', '-')} must be >= {0 if flag == 'jobs' else 1}")
    if args.learning_rate is not None and not 0 < args.learning_rate < 1:
        raise UserError(f"--learning-rate must be in (0, 1), got {args.learning_rate}")
    path = args.out / CONFIG_FILE if args.resume else args.config
    config = load_train_config(path)
    try:
        config = config.with_overrides(n_timesteps=args.timesteps, n_envs=args.n_envs, seed=args.seed)
        config = config.with_validation_seeds(args.validation_seeds).with_learning_rate(args.learning_rate)
    except ValueError as error:
        raise UserError(f"train: {error}") from None
    if args.engine == "rllib":
        return _train_rllib(args, config)
    if args.ray_address or args.num_env_runners:
        raise UserError("--ray-address and --num-env-runners go with --engine rllib")
    from training.train import TrainRequest, train

    request = TrainRequest(
        out_dir=args.out,
        resume=args.resume,
        wandb=args.wandb,
        wandb_project=args.wandb_project,
        progress_bar=not args.no_progress,
        final_test=not args.no_test,
        jobs=args.jobs,
        command=("poa-gym", *sys.argv[1:]) if sys.argv[1:2] == ["train"] else ("poa-gym", "train"),
        report=write_report,
    )
    console.print(
        f"training {config.n_timesteps} steps on {config.n_envs} env(s), seed {config.seed} -> {args.out}"
    )
    result = train(config, request)
    _print_result(result)
    console.print(f"command: {shlex.join(request.command)}")
    return 0


def _train_rllib(args: argparse.Namespace, config: Any) -> int:
    from eval.eval_report import write_report
    from training.rllib_train import RllibRequest, train_rllib

    if args.num_env_runners is not None and args.num_env_runners < 1:
        raise UserError("--num-env-runners must be >= 1")
    request = RllibRequest(
        out_dir=args.out,
        ray_address=args.ray_address,
        num_env_runners=args.num_env_runners,
        final_test=not args.no_test,
        jobs=args.jobs,
        command=("poa-gym", *sys.argv[1:]) if sys.argv[1:2] == ["train"] else ("poa-gym", "train"),
        progress=not args.no_progress,
        wandb=args.wandb,
        wandb_project=args.wandb_project,
        report=write_report,
    )
    console.print(f"RLlib PPO: {config.n_timesteps} steps, seed {config.seed} -> {args.out}")
    result = train_rllib(config, request)
    out.print(
        f"{result.num_timesteps} steps in {result.num_iterations} iterations, {result.train_wall_s:.0f} s; "
        f"exported to {args.out}/export (evaluate with `poa-gym eval ... --policies ppo:{args.out}`)"
    )
    for scenario, entry in result.comparison.items():
        ratios = ", ".join(f"{k}={_fmt(v, '{:.3f}')}" for k, v in entry["ratios"].items())
        out.print(f"{scenario}: {ratios}")
    return 0


def _print_result(result: Any) -> None:
    out.print(
        f"{result.num_timesteps} steps in {result.train_wall_s:.0f} s; validation reward: "
        f"best {result.best_score:.3f}, knee controller {result.knee_score:.3f}"
    )
    for scenario, entry in result.comparison.items():
        table = Table(title=f"{scenario}: held-out test seeds (means)")
        for column in ("policy/phase", "PoA-hat", "TTFT P99 ms", "ITL P99 ms", "req/s", "reward"):
            table.add_column(column, justify="left" if column == "policy/phase" else "right")
        for key, row in entry["summary"].items():
            if key.endswith(("/saturated", "/all")):
                table.add_row(
                    key,
                    _fmt(row["poa_hat"], "{:.2f}"),
                    _fmt(row["ttft_p99_s"], "{:.1f}", 1e3),
                    _fmt(row["itl_p99_s"], "{:.2f}", 1e3),
                    _fmt(row["throughput_rps"], "{:.1f}"),
                    _fmt(row["mean_reward"], "{:.3f}"),
                )
        out.print(table)
        ratios = ", ".join(f"{k}={_fmt(v, '{:.3f}')}" for k, v in entry["ratios"].items())
        out.print(f"ratios: {ratios}")
    if result.wandb_dir is not None:
        out.print(f"W&B offline run: {result.wandb_dir} (upload with `wandb sync {result.wandb_dir}`)")


def _fmt(value: float | None, pattern: str, scale: float = 1.0) -> str:
    return "-" if value is None else pattern.format(value * scale)
