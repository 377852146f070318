# imagerec: the two commands are `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin
IMAGEREC := $(VENV)/imagerec
PYTEST_ARGS ?=

.PHONY: install install-browser run up down status test test-unit lint lock bench fuzz clean

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
	@bash scripts/test.sh $(PYTEST_ARGS)

test-unit: install
	@$(VENV)/pytest -q tests/unit $(PYTEST_ARGS)

lint:
	@$(VENV)/ruff check .

lock:
	@$(VENV)/pip freeze --exclude-editable | sed '1i # Every Python package, pinned (pip freeze of a working install). Regenerate with `make lock`.' > requirements.lock

bench:
	@$(VENV)/python bench/engine.py
	@$(VENV)/python bench/pipeline.py

fuzz: install ## atheris on image inspection/decoding and the upload event parser (FUZZ_SECONDS each)
	@PYTHONPATH=$(CURDIR) $(VENV)/python -m fuzz.run --seconds $(or $(FUZZ_SECONDS),60)

clean: down
	rm -rf .stack/data .stack/logs .stack/run
