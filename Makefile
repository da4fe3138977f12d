# `make demo` sets up .venv and trains the tiny preset on the built-in corpus; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# PyTorch's CPU-only build (a plain `pip install torch` on Linux pulls several GB of CUDA packages). For a GPU:
# make demo TORCH_INDEX=   (PyPI's CUDA build), or TORCH_INDEX=https://download.pytorch.org/whl/cu126 etc.
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup setup-dev demo test test-fast lint browser-deps bench client-venvs

setup: $(VENV)/.installed
setup-dev: $(VENV)/.dev-installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/charmt demo

test: setup-dev
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python -m pytest --durations=15

# The suite without the tests marked slow (each over ~10 s: multi-process, kill -9 and resume, load, notebook).
test-fast: setup-dev
	$(BIN)/python -m pytest -m "not slow"

lint: setup-dev
	$(BIN)/ruff check src tests benchmarks tools

# The real Argos Translate and LibreTranslate (tests/test_argos_clients.py), each in its own virtual environment
# under .venv-clients/ (their pins clash with charmt's). The tests make them when missing too; CI makes them first.
client-venvs: setup-dev
	TORCH_INDEX='$(TORCH_INDEX)' $(BIN)/python tests/test_argos_clients.py

# Debian's Chromium for the browser test (tests/test_browser.py skips without it).
browser-deps:
	apt-get update -qq && apt-get install -y -qq chromium >/dev/null

# The Keras reference (TensorFlow) lives in its own environment, never in .venv.
bench:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	.venv-bench/bin/python -m pip install -q -e '.[bench]'
	bash benchmarks/run_all.sh
