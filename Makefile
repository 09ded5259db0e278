# queueworker: `make dev` runs the platform locally, `make test` passes the tests on a fresh machine.
SHELL := /bin/bash
PY ?= .venv/bin/python
VENV_STAMP := .venv/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help venv deps deps-dev deps-images rabbitmq4-root dev demo test test-unit test-integration lint fmt bench soak manifests crd clean services-up services-down

help:
	@echo "make dev    - broker, API, SMTP sink and image/email workers scaled with their queues (none while"
	@echo "              they are empty) on 127.0.0.1; installs only the venv and rabbitmq-server (Ctrl-C stops them)"
	@echo "make test   - install what is missing (venv, every test package), start the services, run every suite"
	@echo "make demo   - with make dev running: upload 200 images, watch workers scale up, drain, scale down"
	@echo "make lint   - ruff + mypy (the venv only)";  echo "make bench  - benchmarks -> bench/results/"
	@echo "make soak   - the closed loop at 10,000 tasks, with faults, and at fixed min replicas"
	@echo "make fleet  - the operator at 1,000 QueueWorkers (FLEET_N): every status, no 429, a restart that"
	@echo "              changes no replica and no condition (make test runs the same at 200)"

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[test,bench]'
	rm -f .venv/.installed-*; touch $@

# What each target installs: the venv alone (lint), plus the Debian packages it runs (scripts/install-system-deps.sh
# groups: dev = rabbitmq-server; images = podman, runc, mmdebstrap; test = all of them and the test-only ones).
venv: $(VENV_STAMP)

deps-dev: venv
	bash scripts/install-system-deps.sh dev

deps-images: venv
	bash scripts/install-system-deps.sh images

deps: venv
	bash scripts/install-system-deps.sh test

-include mk/*.mk

services-up: deps-dev
	python3 scripts/rabbitmq.py start

services-down:
	python3 scripts/rabbitmq.py stop
	python3 scripts/postgres.py stop

dev: deps-dev
	$(PY) scripts/dev.py

demo: deps-dev  # needs `make dev` running in another terminal
	$(PY) scripts/demo.py $(DEMO_ARGS)

rabbitmq4-root: deps  # RabbitMQ 4.x for the broker matrix: a Debian trixie root, made once (~40 s) and cached
	python3 scripts/rabbitmq.py prepare --version 4

test: deps cluster-bin rabbitmq4-root
	$(PY) -m pytest -p no:cacheprovider --durations=30 $(PYTEST_ARGS)

test-unit: venv  # pure tests: no Debian package
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-chart: deps cluster-bin  # the chart rendered and linted by the real helm (tests/unit stays pure)
	$(PY) -m pytest tests/chart $(PYTEST_ARGS)

test-integration: deps rabbitmq4-root
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: venv
	.venv/bin/ruff check core api workers operator sdk examples tests bench scripts
	.venv/bin/ruff format --check core api workers operator sdk examples tests bench scripts
	.venv/bin/mypy core/qw_core api/qw_api workers/qw_workers operator/qw_operator sdk/queueworker

fmt: venv
	.venv/bin/ruff format core api workers operator sdk examples tests bench scripts
	.venv/bin/ruff check --fix core api workers operator sdk examples tests bench scripts

bench: deps cluster-bin
	$(PY) -m bench $(BENCH_ARGS)

# The closed loop at 10,000 tasks (5,000 with faults), plus the same burst at fixed min replicas (~15 min here).
SOAK_TASKS ?= 10000
soak: deps cluster-bin
	QW_CLOSED_LOOP_TASKS=$(SOAK_TASKS) QW_CLOSED_LOOP_FIXED=1 $(PY) -m pytest -p no:cacheprovider -s tests/e2e/test_closed_loop.py

manifests: cluster-bin  # manifests/api.yaml and janitor.yaml rendered from the chart (scripts/manifests.py)
	$(PY) scripts/manifests.py

crd: venv  # manifests/crd.yaml is generated from qw_operator.crd; the chart keeps a checked copy
	$(PY) -m qw_operator.crd > manifests/crd.yaml
	cp manifests/crd.yaml charts/queueworker/crds/queueworker.yaml

clean:
	rm -rf .venv .run .pytest_cache .mypy_cache .ruff_cache
