# The two commands: `make run` (the whole system, locally, with a demo network) and `make test` (every test).
# Both do all set-up on a fresh machine: uv, the Python environment, Kafka and PostgreSQL.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, else installed for this user from PyPI.
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export UV

# Tests get their own broker and database (other ports, own state), so `make run` and benchmarks never see
# test traffic and tests never see theirs.
TEST_KAFKA_PORT ?= 19092
TEST_PG_PORT ?= 15432
# The access-control tests start (and stop) a broker with SASL/SCRAM and ACLs of their own on this port (and the next).
TEST_SASL_KAFKA_PORT ?= $(shell echo $$(($(TEST_KAFKA_PORT) + 300)))
TEST_ENV := OMS_TEST_KAFKA_BOOTSTRAP=127.0.0.1:$(TEST_KAFKA_PORT) \
	OMS_TEST_POSTGRES_URL=postgresql://oms:oms@127.0.0.1:$(TEST_PG_PORT)/postgres \
	OMS_TEST_SASL_KAFKA_PORT=$(TEST_SASL_KAFKA_PORT)
PYTEST_ARGS ?=

.PHONY: help setup run observe stop test test-infra test-infra-down infra infra-down migrate topics schemas asyncapi lint \
	clean bench bench-quick faults

help:
	@echo "make run         the whole OMS locally (Kafka, PostgreSQL, four services, demo network); Ctrl-C stops"
	@echo "make observe     make run with Prometheus (http://127.0.0.1:9090) scraping the services, alert rules loaded"
	@echo "make stop        stop what make run started (from another terminal)"
	@echo "make test        every test, against a real Kafka broker and PostgreSQL started for the tests"
	@echo "make schemas     regenerate contracts/schemas/ (JSON Schema of every event)"
	@echo "make asyncapi    regenerate docs/asyncapi/ from the services' FastStream apps"
	@echo "make bench       the benchmark: rate sweep, limits, baseline; report in bench/results/<timestamp>/"
	@echo "make bench-quick one short point (50 orders/s, 20 s): a smoke run of the benchmark"
	@echo "make faults      the fault suite at full size: kills, restarts, rebalances, poison under load; docs/reliability.md"
	@echo "make lint        ruff"

$(UV):
	python3 -m pip install --user --quiet uv || python3 -m pip install --user --quiet --break-system-packages uv

.venv/.synced: $(UV) uv.lock pyproject.toml */pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --all-packages
	@touch $@

setup: .venv/.synced

# OBSERVE=1 (or `make observe`): Prometheus too, installed from Debian's packages when missing.
OBSERVE ?= 0

run: setup
	OMS_OBSERVE=$(OBSERVE) deploy/run.sh start

observe: setup
	OMS_OBSERVE=1 deploy/run.sh start

stop:
	deploy/run.sh stop

infra:
	deploy/kafka/kafka.sh start
	deploy/postgres/postgres.sh start

infra-down:
	deploy/kafka/kafka.sh stop
	deploy/postgres/postgres.sh stop

migrate: setup
	for s in order routing inventory notifications; do $(UV) run alembic -c services/$$s/alembic.ini upgrade head; done

topics: setup
	$(UV) run oms topics create

test-infra:
	OMS_KAFKA_PORT=$(TEST_KAFKA_PORT) deploy/kafka/kafka.sh start
	OMS_PG_PORT=$(TEST_PG_PORT) deploy/postgres/postgres.sh start
	deploy/prometheus/prometheus.sh install

test-infra-down:
	OMS_KAFKA_PORT=$(TEST_KAFKA_PORT) deploy/kafka/kafka.sh stop
	OMS_KAFKA_PORT=$(TEST_SASL_KAFKA_PORT) deploy/kafka/kafka.sh stop
	OMS_PG_PORT=$(TEST_PG_PORT) deploy/postgres/postgres.sh stop

test: setup test-infra
	@$(TEST_ENV) $(UV) run --frozen pytest $(PYTEST_ARGS); status=$$?; \
	echo "The test broker (127.0.0.1:$(TEST_KAFKA_PORT)) and database (127.0.0.1:$(TEST_PG_PORT)) keep running for the next run; \
	stop them with: make test-infra-down"; exit $$status

schemas: setup
	$(UV) run python -m oms_contracts.schemas

asyncapi: setup
	$(UV) run python -m oms_tools.asyncapi

# The benchmark starts (and stops) a broker, a database and the services of its own, on ports of its own
# (Kafka 20092, PostgreSQL 16132, HTTP 18081-18084, SMTP 18025), so it never meets `make run` or `make test`.
BENCH_ARGS ?=

bench: setup
	$(UV) run --frozen python -m bench sweep $(BENCH_ARGS)

bench-quick: setup
	$(UV) run --frozen python -m bench quick --rate 50 --window 20 $(BENCH_ARGS)

# The fault suite starts (and kills, and stops) a broker, a database and the services of its own (Kafka 20292,
# PostgreSQL 16332, HTTP 18181-18184, SMTP 18125); `make test` runs it at a bounded size. Report in .cache/faults/.
faults: setup
	OMS_FAULTS_SIZE=full $(UV) run --frozen pytest -s tests/faults/test_faults.py $(PYTEST_ARGS)

lint: setup
	$(UV) run ruff check . && $(UV) run ruff format --check .

clean:
	rm -rf .venv .cache/run
