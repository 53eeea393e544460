# The two set-up commands are `make run` and `make test`; both bootstrap their own tools.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(shell command -v $(PYTHON))
PYTEST_WORKERS ?= 2

.PHONY: run test test-sqlite test-scaled bench lint fmt typecheck install clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-groups
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/tidings serve

# The whole suite, on both profiles: embedded (SQLite, in-process) and scaled (PostgreSQL + Redis).
test: install
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup

test-sqlite: install
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup --profiles embedded

test-scaled: install
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup --profiles scaled

# The realtime bench's Node load client and peer servers (node_modules is not committed).
bench/node_modules/.package-lock.json: bench/package.json bench/package-lock.json
	cd bench && npm ci --no-audit --no-fund --loglevel=error

bench: install bench/node_modules/.package-lock.json
	$(VENV)/bin/python -m bench
	$(VENV)/bin/python -m bench.auth
	$(VENV)/bin/python -m bench.realtime
	$(VENV)/bin/python -m bench.ingest

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

typecheck: install
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache data
