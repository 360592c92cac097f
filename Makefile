# Two commands do everything on a fresh machine with Python 3.11+:
#   make run   - create .venv, install keystile, start the AS on the embedded SQLite default
#   make test  - create/update .venv with dev tools, run linters, type checks and all tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
ARGS   ?=

.PHONY: run test lint typecheck pytest install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/keystile serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	bench/introspect.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
