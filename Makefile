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

## demo: install and run the main job on the embedded simulator
demo: $(STAMP)
	$(VENV)/bin/poa-gym simulate paper-70b-1p5d --concurrency 128 --duration-s 120

## test: install everything the tests need (Dynamo included) and run the whole suite
test: dynamo
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not dynamo"

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
