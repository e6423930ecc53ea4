# The two commands of the README: `make run` (quick start) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ADDR ?= 127.0.0.1:8000
MQTT_PORT ?= 1883
PYTEST_ARGS ?=

.PHONY: run stack install system-deps lint compose-check test test-quick test-faults bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

## Quick start: SQLite, in-memory channel layer, embedded MQTT broker, one process.
run: install
	DEBUG=1 $(BIN)/python manage.py migrate --noinput -v0
	DEBUG=1 $(BIN)/python manage.py demo
	DEBUG=1 $(BIN)/python manage.py runbridge $(ADDR) --mqtt-port $(MQTT_PORT)

## docker-compose.yml's topology without Docker: Debian's servers, data in .stack/ (Ctrl-C stops it).
stack: install
	$(BIN)/python -m topology procfile
	$(BIN)/honcho -f .stack/Procfile -d . start

system-deps:
	bash scripts/install-system-deps.sh

lint: install
	$(BIN)/ruff check .
	DEBUG=1 $(BIN)/mypy

## The compose file as docker compose reads it (placeholder secrets; no Docker engine needed).
compose-check:
	printf 'SECRET_KEY=x\nPOSTGRES_PASSWORD=x\nMQTT_BRIDGE_PASSWORD=x\nXMPP_COMPONENT_SECRET=x\nALLOWED_HOSTS=localhost\n' > .compose-check.env
	docker-compose --env-file .compose-check.env config -q; status=$$?; rm -f .compose-check.env; exit $$status

## Everything CI runs: system packages, lint, type checks, all tests with real servers
## (the fault suite's fast scenarios included; its long ones are `make test-faults`).
test: system-deps install lint compose-check
	$(BIN)/python -m pytest -m "not long" $(PYTEST_ARGS)

## The fault suite: real servers, faults from outside (kill -9, SIGSTOP, a TCP proxy);
## one line per scenario with its pass condition and figures (pytest -s shows them live).
test-faults: install
	$(BIN)/python -m pytest tests/faults -m faults -s $(PYTEST_ARGS)

## The fast loop: no real servers, no browser.
test-quick: install
	$(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

## Every scenario, the bridge against its peers: a table, var/bench/results.json and charts.
## BENCH_ARGS=--quick for fewer, shorter runs; --only fanout,idle for some scenarios.
BENCH_ARGS ?=
bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .stack .pytest_cache .mypy_cache .ruff_cache
