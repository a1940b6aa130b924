# The two commands a new user needs (see README.md):
#   make run    set up, then build the default model organism and print its behaviour table
#   make test   set up, then lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

# Torch is pinned to the CPU wheel in pyproject.toml; the venv is rebuilt when it changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

run: setup
	HF_HUB_OFFLINE=1 $(BIN)/rlinterp organism --preset default --seed 0

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest

clean:
	rm -rf $(VENV) artifacts/organism
