# The two commands a new user needs (see README.md):
#   make run    set up, build the default model organism (behaviour table), then diff both
#               RL regimes against the base (reports in artifacts/diff/)
#   make test   set up, then lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

# Torch is pinned to the CPU wheel in pyproject.toml; the venv is rebuilt when it changes.
# Static figures (kaleido) and the report's browser test need a Chromium: Debian's package,
# installed here when it is missing and apt-get is available (CI machines run as root).
$(STAMP): pyproject.toml
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

ORGANISM := artifacts/organism/default-seed0

run: setup
	HF_HUB_OFFLINE=1 $(BIN)/rlinterp organism --preset default --seed 0 --out $(ORGANISM)
	for regime in weak strong; do \
	  HF_HUB_OFFLINE=1 $(BIN)/rlinterp diff --series $(ORGANISM) --regime $$regime --prompts organism \
	    --out artifacts/diff/default-seed0-$$regime || exit 1; \
	done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest

clean:
	rm -rf $(VENV) artifacts/organism artifacts/diff
