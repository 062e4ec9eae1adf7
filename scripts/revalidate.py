"""Score trained policies again on more validation seeds, to break a tie between snapshots.

    python scripts/revalidate.py training/configs/ppo-levers-2p4d.yaml \
        checkpoints/levers-2p4d OTHER_CHECKPOINT [--seeds 8] [--jobs N]

A training run picks its model on `eval.num_validation_seeds` validation seeds (900000 + i);
with two seeds, snapshots a few hundredths apart are a tie. This scores each candidate (a
checkpoint folder with `export/`, or an export folder) on the config's eval scenarios, schedule
and action space, on `--seeds` validation seeds: never the eval seeds (1000000 + i), so the
choice stays blind to the test. `checkpoints/levers-2p4d` was chosen this way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agents.policy_spec import PolicySpecError
from envs.errors import UserError
from training.config import load_train_config
from training.validation import VALIDATION_SEED_BASE, mean_reward, run_evaluations, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the run's training config (its eval section)")
    parser.add_argument("candidates", type=Path, nargs="+", help="checkpoint or export folders")
    parser.add_argument("--seeds", type=int, default=8, help="validation seeds (default 8)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    missing = [str(path) for path in args.candidates if not path.is_dir()]
    if missing:
        parser.error(f"no such checkpoint or export folder: {', '.join(missing)}")
    names = [f"ppo:{path}" for path in args.candidates]
    try:
        config = load_train_config(args.config)
        items = scores(run_evaluations(config, names, args.seeds, VALIDATION_SEED_BASE, args.jobs))
    except (UserError, PolicySpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    first, last = VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + args.seeds - 1
    print(f"mean episode reward on validation seeds {first}-{last}, eval scenarios of {args.config}:")
    for name in sorted(names, key=lambda n: mean_reward(items, n), reverse=True):
        print(f"  {mean_reward(items, name):8.4f}  {name.removeprefix('ppo:')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
