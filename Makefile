# carrierd: `make run` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= conf/carrierd.toml
LOCALPG := scripts/localpg.sh
# With neither CARRIERD_DSN nor a dsn in the config, carrierd uses the
# project-local PostgreSQL that `make db` starts.
export CARRIERD_LOCAL_DSN := $(shell $(LOCALPG) dsn)

.PHONY: run test test-lowest lint bench chaos stop-db clean db venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	@scripts/ensure-python.sh $(PYTHON) $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

db:
	@if [ -z "$$CARRIERD_DSN" ]; then $(LOCALPG) start; fi

run: $(STAMP) db
	$(BIN)/carrierd migrate --config $(CONFIG)
	VENV=$(VENV) CONFIG=$(CONFIG) scripts/run-demo.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Headless Chromium for the opt-out browser test (installed when root).
browser:
	@scripts/ensure-browser.sh

test: $(STAMP) db lint browser
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The test suite against the lowest dependency versions pyproject.toml allows.
test-lowest: $(STAMP) db
	VENV=$(VENV) scripts/test-lowest.sh $(PYTEST_ARGS)

bench: $(STAMP) db browser
	$(BIN)/python bench/run_all.py

# The fault campaign (bench/chaos.py) on a PostgreSQL cluster of its own;
# e.g. CHAOS_ARGS="--messages 5000 --only daemon-kill,pg-stop-30s".
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

stop-db:
	@$(LOCALPG) stop

clean: stop-db
	rm -rf $(VENV) var build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/out
