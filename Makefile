# Conveniences over scripts/dev.sh, which is what README's quick start and CI run (a fresh
# Debian 12 has no make). VENV and PGUSER_OS pass through.
#   make demo   archive -> backup -> restore to a timestamp on a local directory repository
#   make test   lint, type-check and the full test suite (what CI runs)

VENV    ?= /opt/pitr-venv
PGUSER_OS ?= pgtest
PYTEST_ARGS ?=
DEV := VENV=$(VENV) PGUSER_OS=$(PGUSER_OS) PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/dev.sh

.PHONY: setup test lint unit demo bench clean

setup:
	$(DEV) setup

lint:
	$(DEV) lint

unit:
	$(DEV) unit

test:
	$(DEV) test

demo:
	$(DEV) demo

bench: setup
	$(VENV)/bin/python bench/archive.py

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
