# Set-up is two commands: `make run` and `make test`. Both create .venv and install.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/ocs.toml

.PHONY: install run test lint bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@if [ ! -f "$$($(BIN)/python -c 'from ocs.config import load_config; print(load_config("$(CONFIG)").data_dir)')/ocs.lmdb" ]; then \
		$(BIN)/ocs init --config $(CONFIG) --demo; fi
	$(BIN)/ocs serve --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ocs protocols sim tests
	$(BIN)/mypy

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python -m sim.bench --results bench/results

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
