"""Render `poa-gym eval` summaries as eval/RESULTS.md's side-by-side Markdown table.

Usage: python scripts/eval_table.py PHASE DIR [DIR ...]   (PHASE: below, knee, saturated or all)
Each DIR is an `--out` folder of `poa-gym eval` (it holds summary.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(phase: str, folder: Path) -> list[str]:
    payload = json.loads((folder / "summary.json").read_text())
    scenario = payload["setup"]["scenario"]
    default = next(r for r in payload["summary"] if r["policy"] == "default" and r["phase"] == phase)
    lines = []
    for row in (r for r in payload["summary"] if r["phase"] == phase):
        ratio = default["poa_hat"] / row["poa_hat"] if row["poa_hat"] else float("nan")
        lines.append(
            f"| {scenario} | {row['policy']} | {row['poa_hat']:.2f} | {ratio:.2f}x | "
            f"{row['ttft_p99_s'] * 1e3:.0f} | {row['itl_p99_s'] * 1e3:.1f} | {row['throughput_rps']:.1f} |"
        )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    phase, folders = argv[0], [Path(a) for a in argv[1:]]
    print("| scenario | policy | PoA-hat | default / policy | TTFT P99 ms | ITL P99 ms | req/s |")
    print("|---|---|---|---|---|---|---|")
    for folder in folders:
        print("\n".join(rows(phase, folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
