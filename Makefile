# `make demo` sets up .venv and trains the tiny preset on the built-in corpus; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test lint browser-deps bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel; a looser spec can pull several GB of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/charmt demo

test: setup
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks tools

# Debian's Chromium for the browser test (tests/test_browser.py skips without it).
browser-deps:
	apt-get update -qq && apt-get install -y -qq chromium >/dev/null

# The Keras reference (TensorFlow) lives in its own environment, never in .venv.
bench:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q torch==2.13.0
	.venv-bench/bin/python -m pip install -q -e '.[bench]'
	bash benchmarks/run_all.sh
