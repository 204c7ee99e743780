# pytest-heavy: every target creates .venv and installs the project into it when missing.
# `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The torch extra: `make install WITH_TORCH=1`; TORCH_SPEC picks the build (CI uses the machine's CPU wheel).
WITH_TORCH ?= 0
TORCH_SPEC ?= torch
SPLITS ?= 4
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: install demo demo-compare test test-fast test-qualitative test-slow test-gpu test-heavy examples \
        examples-split coverage mps-start mps-stop mps-status bench lint clean help

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@if [ "$(WITH_TORCH)" = 1 ]; then \
	  $(PY) -m pip install -q '$(TORCH_SPEC)' && $(PY) -m pip install -q -e '.[dev,torch]' \
	  || echo "make: torch could not be installed; the torch tests will be skipped"; fi
	@touch $@

install: $(STAMP) ## create .venv and install pytest-heavy with its dev tools (WITH_TORCH=1 adds torch)

demo: $(STAMP) ## run pytest-heavy on the bundled sample project (docs/demo), CPU only
	mkdir -p .heavy
	cd docs/demo && ../../$(BIN)/python -m pytest -rs --heavy-report-html=../../.heavy/demo-report.html $(PYTEST_ARGS)

demo-compare: $(STAMP) ## the demo suite isolated and in one process, peaks side by side
	$(PY) docs/demo/compare.py $(PYTEST_ARGS)

test: $(STAMP) ## the project's own test suite (what CI runs)
	$(PY) -m pytest -ra $(PYTEST_ARGS)

test-fast: $(STAMP) ## fast tier: no qualitative, no slow tests
	$(PY) -m pytest -m "not qualitative" $(PYTEST_ARGS)

test-qualitative: $(STAMP) ## only the qualitative tests
	$(PY) -m pytest -m qualitative $(PYTEST_ARGS)

test-slow: $(STAMP) ## only the slow tests
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-gpu: $(STAMP) ## GPU tier; starts MPS first on EXCLUSIVE_PROCESS GPUs when it can, stops it after
	bash scripts/with-mps.sh $(PY) -m pytest -rs -m "requires_gpu or huggingface or vllm" test $(PYTEST_ARGS)

test-heavy: $(STAMP) ## heavy tier (real HF/vLLM backends, held-memory GPU modules), isolated
	$(PY) -m pytest -rs --heavy-isolate always test/backends test/gpu $(PYTEST_ARGS)

examples: $(STAMP) ## run docs/examples as tests
	$(PY) -m pytest -rs docs/examples $(PYTEST_ARGS)

examples-split: $(STAMP) ## run docs/examples in SPLITS balanced subsets, one pytest process each
	$(BIN)/pytest-heavy split $(SPLITS) docs/examples $(PYTEST_ARGS)

coverage: $(STAMP) ## whole run with coverage (children included): htmlcov/ and coverage.json
	$(PY) -m pytest --cov --cov-report=term --cov-report=html --cov-report=json $(PYTEST_ARGS)

mps-start: $(STAMP) ## start an NVIDIA MPS control daemon for this user
	bash scripts/mps-start.sh

mps-stop: $(STAMP) ## stop the MPS daemon this tool started
	bash scripts/mps-stop.sh

mps-status: $(STAMP) ## MPS daemon pid, servers and directories
	bash scripts/mps-status.sh

bench: $(STAMP) ## run the benchmarks and regenerate docs/benchmarks/*.md
	$(PY) bench/run.py

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check src test bench
	$(BIN)/mypy

clean: ## remove .venv, caches and coverage output
	rm -rf $(VENV) .pytest_cache htmlcov coverage.json .coverage .coverage.* .tox .heavy build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 20
