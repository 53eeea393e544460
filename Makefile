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

# Bytecode is compiled at install: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every
# start would otherwise compile all of it again, seconds before `serve` answers.
$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-groups --compile-bytecode
	$(VENV)/bin/python -m compileall -q src
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/tidings serve

# The browser tests (tests/web) drive Debian's Chromium; Playwright's browser download is never used.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	@echo "Installing Debian's chromium for the browser tests"
	@export DEBIAN_FRONTEND=noninteractive; \
	$(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 \
	|| { $(SUDO) apt-get update -qq >/dev/null && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The whole suite, on both profiles: embedded (SQLite, in-process) and scaled (PostgreSQL + Redis).
test: install $(CHROMIUM)
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup

test-sqlite: install $(CHROMIUM)
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup --profiles embedded

test-scaled: install $(CHROMIUM)
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup --profiles scaled

# The realtime bench's Node load client and peer servers (node_modules is not committed).
bench/node_modules/.package-lock.json: bench/package.json bench/package-lock.json
	# npm 11 can call its own platform-pruned lock out of sync; npm install keeps the pinned versions.
	cd bench && (npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error)

bench: install bench/node_modules/.package-lock.json
	$(VENV)/bin/python -m bench
	$(VENV)/bin/python -m bench.auth
	$(VENV)/bin/python -m bench.realtime
	$(VENV)/bin/python -m bench.ingest
	$(VENV)/bin/python -m bench.delivery

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
