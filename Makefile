# Cache cluster: `make run` starts a local node, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
PORT ?= 8001
NODES ?= 3

.DEFAULT_GOAL := help
.PHONY: help venv run test lint typecheck bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP) ## create the virtualenv and install the pinned requirements

run: $(STAMP) ## start a local cluster of NODES nodes (default 3) from PORT; Ctrl-C stops it
	$(PY) manage.py runcluster --nodes $(NODES) --base-port $(PORT)

test: $(STAMP) ## run the whole test suite (PostgreSQL tests run when 127.0.0.1:5432 answers)
	$(PY) -m pytest

lint: $(STAMP) ## ruff lint and format check, mypy on the public modules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy cacheapi nodes ratelimit cache_project

bench: $(STAMP) ## benchmarks: writes bench/results/*.md and *.png
	$(PY) bench/run.py

clean: ## remove the virtualenv, caches and the local registry
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis var
