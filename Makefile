# Two commands do all the set-up on a fresh machine:
#   make demo   - the quickstart: fetch SmolLM2-135M (and MiniLM, for SERAC), edit with ROME, show before / after
#   make test   - the test suite (fast tests + real-model tests on SmolLM2)
# Everything lives in .venv; models are cached in $EDITKIT_CACHE (default ~/.cache/editkit).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is the CPU build on this kind of machine; an unconstrained torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
CORPUS ?= $(firstword $(wildcard ../shared/data/wikitext/wikitext-2/valid.txt))
export EDITKIT_DATA ?= $(abspath ../shared/data)

.PHONY: demo test test-all lint setup clean-venv models

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,serve]'
	touch $@

setup: $(BIN)/.installed

models: setup
	$(BIN)/python -c "from editkit.models.zoo import fetch; fetch('smollm2-135m'); fetch('minilm-l6')"

demo: models
	$(BIN)/editkit quickstart $(if $(CORPUS),--corpus $(CORPUS))

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: models lint
	$(BIN)/pytest -q

test-all: models
	$(BIN)/pytest -q -m ""

clean-venv:
	rm -rf $(VENV)
