# The README's two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run check test bench base-image clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hosted-agents needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

## Run the service on its embedded defaults (SQLite under ./data; Slack and the model from .env if set).
run: $(STAMP)
	$(BIN)/hosted-agents serve

## The static gates, configured in pyproject.toml: lint (ruff), types (mypy --strict) and the
## layer contracts (import-linter). All three run, then any failure fails the target.
check: $(STAMP)
	@status=0; \
	echo "ruff check"; $(BIN)/ruff check . || status=1; \
	echo "mypy"; $(BIN)/mypy || status=1; \
	echo "lint-imports"; $(BIN)/lint-imports --no-logo || status=1; \
	exit $$status

## Run the tests: the static gates first (seconds), then brings up PostgreSQL, the Docker engine
## (installed if missing) and the sandbox base image (built locally with debootstrap, cached by
## tag), then pytest.
test: check
	scripts/test-services.sh
	$(BIN)/pytest $(PYTEST_ARGS)

## Build the sandbox base image (hosted-agents/base:bookworm) without a registry.
base-image:
	scripts/ensure-docker.sh && scripts/build-base-image.sh

## Run the benchmarks and print their figures.
bench: $(STAMP)
	scripts/test-services.sh
	$(BIN)/python -m bench.mention_latency
	$(BIN)/python -m bench.sandbox_latency
	$(BIN)/python -m bench.classifier
	$(BIN)/python -m bench.mention_burst
	$(BIN)/python -m bench.egress_proxy
	$(BIN)/python -m bench.web_fanout
	$(BIN)/python -m bench.warm_up_latency
	$(BIN)/python -m bench.long_session
	$(BIN)/python -m bench.instances

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
