# The two commands: `make up` runs the system, `make test` passes the tests (each sets up .venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv up down test lint unit bench sanitize clean

$(STAMP): pyproject.toml setup.py native/build.py $(wildcard native/*.c native/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

up: venv
	$(VENV)/bin/ansible-playbook site.yml

down:
	@if [ -x $(VENV)/bin/ansible-playbook ]; then $(VENV)/bin/ansible-playbook playbooks/teardown.yml; fi

test: lint
	$(PY) -m pytest

# Static checks, part of `make test`: ruff (lint + format) everywhere, mypy --strict on the packages.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The fast tier alone (no subprocesses): seconds.
unit: venv
	$(PY) -m pytest -m "not slow"

bench: venv
	$(PY) -m client.benchmark --json .run/bench.json $(BENCH_ARGS)

sanitize: venv
	bash native/sanitize.sh

clean: down
	rm -rf $(VENV) build *.egg-info native/*.so .pytest_cache .hypothesis
