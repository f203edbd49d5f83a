# `make dev` brings the whole thing up on an embedded Redis; `make test` runs
# every check CI runs. Both create .venv (python3 -m venv) on first use and
# reinstall the project whenever pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite mostly waits (timeouts, deadlines, process start-up), so it runs in
# more pytest-xdist processes than the 2-core CI machine has cores. Tests go out
# a few at a time (--maxschedchunk), slow ones first (tests/conftest.py), so no
# process is left with the last minute of work. `make test PYTEST_XDIST=` (or
# PYTEST_ARGS='-n 0') runs everything in one process.
PYTEST_XDIST ?= -n 4 --maxschedchunk 8

.PHONY: dev test lint typecheck unit e2e bench install clean

dev: $(STAMP)
	$(BIN)/smtpcheck dev

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_XDIST) -m 'not e2e' $(PYTEST_ARGS)

e2e: $(STAMP)
	$(BIN)/pytest $(PYTEST_XDIST) -m e2e $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/service.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
