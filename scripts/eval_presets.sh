#!/usr/bin/env bash
# The README's side-by-side table: every policy on the paper presets and the modern presets.
# Usage: scripts/eval_presets.sh OUT_DIR [JOBS] [SEEDS] [paper|modern|all]
# POA_GYM names the command (default: poa-gym); one folder per preset under OUT_DIR.
set -euo pipefail
out_dir=${1:?usage: eval_presets.sh OUT_DIR [JOBS] [SEEDS] [paper|modern|all]}
jobs=${2:-$(nproc)}
seeds=${3:-2}
which=${4:-all}
poa_gym=${POA_GYM:-poa-gym}
classic=round-robin,p2c,least-loaded,cache-aware,llm-d

# Paper presets: Dynamo v0.9 routing (no credit decay there); the load ramps across the paper's
# knee, C in (96, 128].
paper() {
  for preset in llama70b-b200-1p5d llama70b-b200-1p2d nemotron340b-b200-1p2d; do
    $poa_gym eval "$preset" --policies "default,best-static,knee,$classic" --schedule ramp \
      --low 32 --high 512 --seeds "$seeds" --jobs "$jobs" --out "$out_dir/$preset"
  done
}

# Modern presets: Dynamo 1.6.1 routing, multi-turn sessions with long shared prefixes; they
# saturate at far fewer clients, so the ramp starts lower.
modern() {
  for preset in llama70b-b200-3p3d-multiturn llama8b-h200-agg8-multiturn; do
    $poa_gym eval "$preset" --policies "default,credit-decay,best-static,knee,$classic" \
      --schedule ramp --low 8 --high 256 --knee-band 16,32 --seeds "$seeds" --jobs "$jobs" \
      --out "$out_dir/$preset"
  done
}

case $which in
  paper) paper ;;
  modern) modern ;;
  all) paper; modern ;;
  *) echo "unknown set '$which' (paper, modern or all)" >&2; exit 2 ;;
esac
