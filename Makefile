# The two commands a new user needs (see README.md):
#   make run    set up, then run the whole pipeline on the default model organism (built if
#               missing): diffs, a base SAE and feature cards, tracking, the selection index
#               and circuits for every regime, one report (artifacts/run/default-seed0/report.html)
#   make test   set up, then lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench clean

setup: $(STAMP)

# Torch is pinned to the CPU wheel in pyproject.toml; the venv is rebuilt when it changes.
# The ray extra is installed so that the test suite also runs the Ray executor's tests
# (without it they are skipped: the default install does not need Ray).
# Static figures (kaleido) and the report's browser test need a Chromium: Debian's package,
# installed here when it is missing and apt-get is available (CI machines run as root).
$(STAMP): pyproject.toml
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,ray]'
	touch $@

run: setup
	HF_HUB_OFFLINE=1 $(BIN)/rlinterp run --config configs/default.toml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# The comparative benchmarks (README, "Benchmarks"): every lane, 5 interleaved repeats, one
# thread; about 10 minutes on 2 cores. BENCH_FLAGS=--quick runs tiny sizes (about a minute).
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py --out artifacts/bench $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) artifacts/organism artifacts/diff artifacts/run artifacts/bench
