# cometd-bridge developer commands. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/servers/node_modules/.installed

.PHONY: test lint typecheck pytest demo bench bench-ha venv node-deps rabbitmq lint-deploy clean test-extras chaos browser

## venv: create/refresh .venv with the project and its dev extra (re-runs when pyproject changes)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)
venv: $(STAMP)

## node-deps: the real CometD servers used by the interop tests (cometd-nodejs-server, faye)
$(NODE_STAMP): tests/servers/package.json tests/servers/package-lock.json
	cd tests/servers && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)
node-deps: $(NODE_STAMP)

## rabbitmq: make sure a broker answers on 127.0.0.1:5672 (starts a local one if installed)
rabbitmq:
	bash scripts/ensure-rabbitmq.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy --strict bridge

## lint-deploy: image, compose, Kubernetes, Prometheus rules, dashboard (no Docker/cluster needed)
lint-deploy: venv
	bash deploy/validate.sh

## test-extras: what the optional paths' tests need, so none of them is skipped under
## `make test`: uvloop (the bench's uvloop variant) and the Node reference bridge (bench/)
TEST_EXTRAS_STAMP := $(VENV)/.test-extras
$(TEST_EXTRAS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet uvloop
	touch $(TEST_EXTRAS_STAMP)
BENCH_NODE_STAMP := bench/node_modules/.installed
test-extras: $(TEST_EXTRAS_STAMP) $(BENCH_NODE_STAMP)

## browser: Debian's headless Chromium and its driver, for the status page's browser test
## (tests/e2e/test_status_page_browser.py); installed with apt-get when missing
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
		echo "installing chromium and chromium-driver (the status page's browser test)"; \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver >/dev/null; fi

## PYTEST_WORKERS: processes running test files side by side (most tests wait on servers, so
## two workers halve the wall time on two cores); 0 runs everything in this process
PYTEST_WORKERS ?= 2
pytest: venv node-deps rabbitmq test-extras browser
	$(BIN)/pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

## test: everything CI checks
test: venv node-deps rabbitmq lint typecheck lint-deploy pytest

## demo: an embedded demo CometD source streaming into the local RabbitMQ (or BRIDGE_AMQP_URL's)
demo: venv
	bash scripts/ensure-rabbitmq.sh --unless-amqp-url
	$(BIN)/cometd-bridge demo

## bench-node-deps: the Node reference bridge (cometd, cometd-nodejs-client, amqplib)
$(BENCH_NODE_STAMP): bench/package.json bench/package-lock.json
	cd bench && npm ci --no-audit --no-fund --loglevel=error
	touch $(BENCH_NODE_STAMP)

## bench: throughput, latency and memory against a naive baseline and the source/sink ceilings
bench: venv node-deps rabbitmq $(BENCH_NODE_STAMP)
	$(BIN)/python bench/run.py

## bench-ha: replicas (BRIDGE_COORDINATION=rabbitmq): 30 busy endpoints over 1 and 3 replicas,
## and the failover time over 10 SIGKILLs of the active (about 2 minutes; not part of `bench`)
bench-ha: venv node-deps rabbitmq
	$(BIN)/python bench/run.py --only ha

## chaos: a seeded random schedule of faults against a replay and an ack server while streaming
## (a few minutes; CHAOS_SEED=N replays a schedule; `make test` runs a 45-second seed of it)
CHAOS_SEED ?=
CHAOS_DURATION ?= 180
chaos: venv node-deps rabbitmq
	$(BIN)/python -m tests.faults.chaos --duration $(CHAOS_DURATION) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

clean:
	rm -rf $(VENV) .venv-deploy .cache tests/servers/node_modules bench/node_modules .pytest_cache .mypy_cache .ruff_cache
