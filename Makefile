# imagerec: the two commands are `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin
IMAGEREC := $(VENV)/imagerec
PYTEST_ARGS ?=
# `make up TOPOLOGY=cluster`: three Kafka nodes, four MinIO nodes, Redis with Sentinel,
# three workers (docs/OPERATIONS.md). The default is the small single-node stack.
TOPOLOGY ?= $(or $(IMAGEREC_TOPOLOGY),single)
export IMAGEREC_TOPOLOGY := $(TOPOLOGY)

.PHONY: install install-browser run up down status test test-unit test-cluster lint lock bench chaos fuzz clean

install:
	@bash scripts/install.sh

install-browser:
	@bash scripts/install.sh --browser

run: install ## start everything in the foreground; Ctrl-C stops it all
	@$(IMAGEREC) stack run

up: install ## start everything detached; returns when ready
	@$(IMAGEREC) stack up

down:
	@if [ -x $(IMAGEREC) ]; then $(IMAGEREC) stack down; else echo "imagerec is not installed"; fi

status:
	@$(IMAGEREC) stack status

test: install-browser ## install, start what the tests need, run everything, stop what it started
	@IMAGEREC_TOPOLOGY=single bash scripts/test.sh $(PYTEST_ARGS)
	@CLUSTER_OPTIONAL=1 bash scripts/test-cluster.sh

test-cluster: install ## the cluster topology: replication, failover, chaos (starts and stops it)
	@bash scripts/test-cluster.sh $(PYTEST_ARGS)

test-unit: install
	@$(VENV)/pytest -q tests/unit $(PYTEST_ARGS)

lint:
	@$(VENV)/ruff check .

lock:
	@$(VENV)/pip freeze --exclude-editable | sed '1i # Every Python package, pinned (pip freeze of a working install). Regenerate with `make lock`.' > requirements.lock

bench:
	@$(VENV)/python bench/engine.py
	@$(VENV)/python bench/pipeline.py

chaos: ## every fault scenario against a running cluster (make up TOPOLOGY=cluster)
	@$(VENV)/python bench/chaos.py

fuzz: install ## atheris on image inspection/decoding and the upload event parser (FUZZ_SECONDS each)
	@PYTHONPATH=$(CURDIR) $(VENV)/python -m fuzz.run --seconds $(or $(FUZZ_SECONDS),60)

clean: down
	rm -rf .stack/data .stack/data-cluster .stack/logs .stack/run .stack/stack.env
