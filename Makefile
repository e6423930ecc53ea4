# The two commands of the README: `make run` (quick start) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ADDR ?= 127.0.0.1:8000
MQTT_PORT ?= 1883
PYTEST_ARGS ?=

.PHONY: run install system-deps lint test test-quick bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Quick start: SQLite, in-memory channel layer, embedded MQTT broker, one process.
run: install
	DEBUG=1 $(BIN)/python manage.py migrate --noinput -v0
	DEBUG=1 $(BIN)/python manage.py demo
	DEBUG=1 $(BIN)/python manage.py runbridge $(ADDR) --mqtt-port $(MQTT_PORT)

system-deps:
	bash scripts/install-system-deps.sh

lint: install
	$(BIN)/ruff check .
	DEBUG=1 $(BIN)/mypy

## Everything CI runs: system packages, lint, type checks, all tests with real servers.
test: system-deps install lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The fast loop: no real servers, no browser.
test-quick: install
	$(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
