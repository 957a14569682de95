VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint bench clean

setup:
	scripts/setup.sh $(VENV)

## Set everything up and run the embedded demo (no servers needed).
demo: setup
	$(VENV)/bin/augment demo --out demo-output

## Set everything up and run the whole test suite (starts its own Redis, S3 server and workers).
test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

## Unit tests only: no servers, no worker processes, nothing marked slow (the demo).
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

# vulture at 100 % confidence only (unused imports, variables, unreachable code): lower levels flag click commands
# and protocol methods that are used by name
lint: setup
	$(VENV)/bin/ruff check producer worker shared tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/vulture producer worker shared tests benchmarks --min-confidence 100

bench: setup
	$(VENV)/bin/python benchmarks/train_throughput.py

clean:
	rm -rf demo-output build *.egg-info
