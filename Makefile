# The README's two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hosted-agents needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

## Run the service on its embedded defaults (SQLite under ./data; Slack and the model from .env if set).
run: $(STAMP)
	$(BIN)/hosted-agents serve

## Run the tests: starts what they need (PostgreSQL) if it is installed but stopped.
test: $(STAMP)
	scripts/test-services.sh
	$(BIN)/pytest $(PYTEST_ARGS)

## Run the benchmarks and print their figures.
bench: $(STAMP)
	$(BIN)/python -m bench.mention_latency

clean:
	rm -rf $(VENV) data .pytest_cache
