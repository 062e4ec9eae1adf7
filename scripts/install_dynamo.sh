#!/usr/bin/env bash
# Installs NVIDIA Dynamo 1.6.1 (ai-dynamo + ai-dynamo-runtime) into a virtual environment.
#
# Why not plain `pip install ai-dynamo==1.6.1`: the wheel hard-depends on `aisimulate==0.13.0`, a
# placeholder package that downloads the real wheel from NVIDIA's own index at install time, which
# is unreachable from our machines (see shared research notes, dynamo.md §10.1). The mocker engine
# is compiled into ai-dynamo-runtime, so installing ai-dynamo with --no-deps plus its real
# dependency list loses nothing the simulator cross-check or the live backend need.
set -euo pipefail
VENV="${1:-.venv}"
PY="$VENV/bin/python"
# Dynamo's Planner (the P/D baseline, eval/planner_baseline.py) imports these at module level;
# the ai-dynamo wheel does not list them.
PLANNER_DEPS=("scikit-learn==1.9.1" "plotly==7.1.0" "prometheus-api-client==0.7.2" "pmdarima==2.1.1" "filterpy==2.0.0" "prophet==1.5.0")
if "$PY" -c "import dynamo.replay.api, dynamo.llm, sklearn, plotly, prometheus_api_client, pmdarima, filterpy, prophet" 2>/dev/null; then
  echo "ai-dynamo already installed in $VENV"
  exit 0
fi
"$PY" -m pip install --quiet \
  "ai-dynamo-runtime==1.6.1" "aiohttp>=3.14.3,<4" certifi "kubernetes>=32.0.1,<33" \
  "msgspec>=0.19.0" "prometheus-client>=0.23.1,<1" "pyzmq>=26" "redis>=6.2,<9" "tqdm>=4" \
  "transformers>=4.56" "typing-extensions>=4.10" "zstandard>=0.23,<1"
"$PY" -m pip install --quiet --no-deps "ai-dynamo==1.6.1"
"$PY" -m pip install --quiet "${PLANNER_DEPS[@]}"
"$PY" -c "import dynamo.replay.api, dynamo.llm; print('ai-dynamo 1.6.1 installed in $VENV')"
