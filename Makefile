# Two commands do everything on a fresh machine with Python 3.11+:
#   make run   - create .venv, install keystile with its server extra only, start the AS on
#                the embedded SQLite default
#   make test  - create/update .venv with the dev tools, run linters, type checks and all tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# One stamp per install: `make run` needs only '.[server]'; everything else needs '.[dev]'
# (which includes the server extra, so a dev install also satisfies `make run`).
SERVER_STAMP := $(VENV)/.installed-server
DEV_STAMP    := $(VENV)/.installed-dev
ARGS   ?=
# tests/e2e/test_oidc_interop.py drives openid-client (npm) from this folder; npm ci installs
# exactly what package-lock.json names. Without npm the test skips (fails in CI).
RP_DIR   := tests/e2e/oidc_rp
RP_STAMP := $(RP_DIR)/node_modules/.installed

.PHONY: run test lint typecheck pytest install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

$(SERVER_STAMP): pyproject.toml | $(BIN)/python
	@if [ "$(DEV_STAMP)" -nt pyproject.toml ]; then \
		echo "keystile's dev install includes the server extra"; \
	else \
		echo "$(BIN)/python -m pip install --quiet -e '.[server]'"; \
		$(BIN)/python -m pip install --quiet -e '.[server]'; \
	fi
	touch $(SERVER_STAMP)

# The DPoP interop test's npm client (oauth4webapi) comes from the committed lock file.
$(DEV_STAMP): pyproject.toml tests/interop/package-lock.json | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@if command -v npm >/dev/null; then \
		echo "npm ci --prefix tests/interop"; \
		npm ci --prefix tests/interop --no-audit --no-fund --silent; \
	else \
		echo "npm not found: tests/e2e/test_dpop_interop.py will install oauth4webapi or skip"; \
	fi
	touch $(DEV_STAMP)

$(RP_STAMP): $(RP_DIR)/package.json $(RP_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
		echo "cd $(RP_DIR) && npm ci --no-audit --no-fund"; \
		(cd $(RP_DIR) && npm ci --no-audit --no-fund --loglevel=error) && touch $(RP_STAMP); \
	else \
		echo "npm not found: the openid-client interop test will skip (CI requires it)"; \
	fi

install: $(DEV_STAMP) $(RP_STAMP)

run: $(SERVER_STAMP)
	$(BIN)/keystile serve $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP) $(RP_STAMP)
	$(BIN)/pytest $(ARGS)

test: lint typecheck pytest

bench: $(DEV_STAMP)
	bench/introspect.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
