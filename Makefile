# pytest-heavy: every target creates .venv and installs the project into it when missing.
# `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The torch group: `make install WITH_TORCH=1`; TORCH_SPEC picks the torch requirement, and pip's own
# PIP_INDEX_URL / PIP_EXTRA_INDEX_URL the index (docs/dependencies.md: the CPU wheel).
WITH_TORCH ?= 0
TORCH_SPEC ?= torch
# test-oldest: the oldest supported pytest, in a virtual environment of its own.
OLDEST_VENV ?= .venv-oldest
OLDEST_PYTEST ?= pytest==8.0.*
OLDEST_TESTS ?= $(wildcard test/test_isolation.py test/test_plugins.py test/test_fidelity.py test/test_fidelity2.py test/test_xdist_isolation.py)
SPLITS ?= 4
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: install demo demo-compare test test-fast test-qualitative test-slow test-gpu test-heavy test-oldest \
        examples examples-split coverage mps-start mps-stop mps-status bench lint dist docs clean help

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=25.1'  # 25.1: --group (PEP 735 dependency groups)
	$(PY) -m pip install -q -e . --group dev --group lint --group tox --group docs
	@if [ "$(WITH_TORCH)" = 1 ]; then \
	  $(PY) -m pip install -q '$(TORCH_SPEC)' && $(PY) -m pip install -q --group torch \
	  || echo "make: torch could not be installed; the torch tests will be skipped"; fi
	@touch $@

install: $(STAMP) ## create .venv and install pytest-heavy with its dev tools (WITH_TORCH=1 adds torch)

demo: $(STAMP) ## run pytest-heavy on the bundled sample project (docs/demo), CPU only
	mkdir -p .heavy
	cd docs/demo && ../../$(BIN)/python -m pytest -rs --heavy-report-html=../../.heavy/demo-report.html $(PYTEST_ARGS)

demo-compare: $(STAMP) ## the demo suite isolated and in one process, peaks side by side
	$(PY) docs/demo/compare.py $(PYTEST_ARGS)

# The tiers are defined once, in scripts/tier.sh, which tox's environments of the same names run too:
# `pytest-heavy tier NAME -- ARGS` (python -m pytest -m EXPR ARGS) for the product's tiers, which ends a
# tier with no tests here with exit 0 and a line saying so, where plain pytest exits 5.
TIER := TIER_RUN=$(PY) bash scripts/tier.sh

test: $(STAMP) ## the project's own test suite (what CI runs)
	$(TIER) default $(PYTEST_ARGS)

test-fast: $(STAMP) ## fast tier: no qualitative, no slow tests
	$(TIER) fast $(PYTEST_ARGS)

test-qualitative: $(STAMP) ## only the qualitative tests
	$(TIER) qualitative $(PYTEST_ARGS)

test-slow: $(STAMP) ## only the slow tests
	$(TIER) slow $(PYTEST_ARGS)

test-gpu: $(STAMP) ## GPU tier; starts MPS first on EXCLUSIVE_PROCESS GPUs when it can, stops it after
	$(TIER) gpu $(PYTEST_ARGS)

test-heavy: $(STAMP) ## heavy tier (real HF/vLLM backends, held-memory GPU modules), isolated
	$(TIER) heavy $(PYTEST_ARGS)

$(OLDEST_VENV)/.installed: pyproject.toml
	@test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade 'pip>=25.1'
	$(OLDEST_VENV)/bin/python -m pip install -q -e . --group dev '$(OLDEST_PYTEST)'
	@touch $@

test-oldest: $(OLDEST_VENV)/.installed ## isolation and plugin tests on the oldest supported pytest (8.0), slow cells too
	$(OLDEST_VENV)/bin/python -m pytest -p no:randomly --heavy-run-slow $(OLDEST_TESTS) $(PYTEST_ARGS)

examples: $(STAMP) ## run docs/examples as tests
	$(PY) -m pytest -rs docs/examples $(PYTEST_ARGS)

examples-split: $(STAMP) ## run docs/examples in SPLITS balanced subsets, one pytest process each
	$(BIN)/pytest-heavy split $(SPLITS) docs/examples $(PYTEST_ARGS)

# `coverage run` starts measuring before pytest imports its plugins, so pytest-heavy's own import-time
# lines count (pytest --cov starts after them and warns that the module was imported unmeasured).
coverage: $(STAMP) ## whole run with coverage (children included): htmlcov/ and coverage.json
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest -ra $(PYTEST_ARGS); status=$$?; \
	  $(BIN)/coverage combine -q && $(BIN)/coverage report && $(BIN)/coverage html -q && \
	  $(BIN)/coverage json -q && exit $$status

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

dist: $(STAMP) ## build the sdist and wheel into dist/ and check them with twine
	rm -rf dist
	$(PY) -m build
	$(BIN)/twine check --strict dist/*
	@# The sdist ships the package only (MANIFEST.in): tests without their fakes and docs cannot run.
	@if tar tzf dist/*.tar.gz | grep -E '/(test|bench|docs)/'; then \
	  echo "make dist: the sdist ships files it must not (above)"; exit 1; fi

# --strict: every warning fails the build, and mkdocs.yml's `validation` makes a broken link or anchor one.
docs: $(STAMP) ## build the documentation site (mkdocs.yml, docs/) into site/, strict: a broken link fails
	$(BIN)/mkdocs build --strict --site-dir site

clean: ## remove .venv, caches, coverage output and the built site
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache htmlcov coverage.json .coverage .coverage.* .tox .heavy build dist site src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 20
