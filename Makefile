# poa-gym developer targets. Everything installs into .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format dynamo bench crosscheck clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## dynamo: install NVIDIA Dynamo 1.6.1 (for the cross-check and benchmark) into .venv
dynamo: $(STAMP)
	bash scripts/install_dynamo.sh $(VENV)

## demo: install, train a PPO policy briefly, then put the shipped policy, the knee controller and
## the default router side by side on the paper's 1P/5D preset (under Dynamo 1.6.1 routing)
demo: $(STAMP)
	rm -rf demo-out
	$(VENV)/bin/poa-gym train --config training/configs/demo.yaml --out demo-out/train
	$(VENV)/bin/poa-gym eval llama70b-b200-1p5d --set router.router_semantics=dynamo-1.6 \
		--policies ppo:checkpoints/default,knee,default --seeds 1 --intervals 24 --out demo-out/eval

## test: install everything the tests need (Dynamo included) and run the whole suite
test: dynamo
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not dynamo and not live"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: dynamo
	$(VENV)/bin/poa-gym bench

crosscheck: dynamo
	$(VENV)/bin/poa-gym crosscheck

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
