# tandem: `make run` (the demo, end to end) and `make test` (everything CI checks).
# Both install what they need on a fresh machine: a Python venv with pinned packages
# (brain-py/constraints.txt) and the Rust crates pinned by sidecar-rs/Cargo.lock.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CARGO := cargo
CARGO_FLAGS := --locked --manifest-path sidecar-rs/Cargo.toml
SIDECAR_DEBUG := sidecar-rs/target/debug/sidecar
SIDECAR_RELEASE := sidecar-rs/target/release/sidecar
AGENTS ?= 120

.PHONY: help run test deps rust-tools sidecar sidecar-release lint fmt proto unit-rust unit-python e2e clean

help:
	@echo "make run    build everything and run the demo: tool service + sidecar + $(AGENTS) agents"
	@echo "make test   fmt, clippy, cargo test, ruff, mypy, pytest (unit and cross-language)"
	@echo "make proto  regenerate the Python stubs after editing proto/"

# ---------------------------------------------------------------- setup

$(STAMP): brain-py/pyproject.toml brain-py/constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@echo "==> creating $(VENV) and installing the brain's pinned Python packages"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c brain-py/constraints.txt -e 'brain-py[dev]'
	touch $@

deps: $(STAMP) rust-tools

rust-tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

sidecar: rust-tools
	$(CARGO) build $(CARGO_FLAGS)

sidecar-release: rust-tools
	@echo "==> building the sidecar (release; the first build takes a few minutes)"
	$(CARGO) build $(CARGO_FLAGS) --release

# ---------------------------------------------------------------- the two commands

run: $(STAMP) sidecar-release
	$(PY) brain-py/scripts/demo_stack.py --sidecar-bin $(SIDECAR_RELEASE) --agents $(AGENTS)

test: deps lint unit-rust unit-python e2e

# ---------------------------------------------------------------- pieces of `make test`

lint: deps
	$(CARGO) fmt --manifest-path sidecar-rs/Cargo.toml --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --all-targets -- -D warnings
	cd brain-py && ../$(VENV)/bin/ruff check . ../tests
	cd brain-py && ../$(VENV)/bin/ruff format --check . ../tests
	cd brain-py && ../$(VENV)/bin/mypy

unit-rust: rust-tools
	$(CARGO) test $(CARGO_FLAGS)

unit-python: $(STAMP)
	cd brain-py && ../$(VENV)/bin/pytest -q

e2e: $(STAMP) sidecar
	SIDECAR_BIN=$(abspath $(SIDECAR_DEBUG)) $(VENV)/bin/pytest -q tests

# ---------------------------------------------------------------- maintenance

fmt: $(STAMP)
	$(CARGO) fmt --manifest-path sidecar-rs/Cargo.toml --all
	cd brain-py && ../$(VENV)/bin/ruff format . ../tests && ../$(VENV)/bin/ruff check --fix . ../tests

proto: $(STAMP)
	$(PY) brain-py/scripts/gen_proto.py

clean:
	$(CARGO) clean --manifest-path sidecar-rs/Cargo.toml
	rm -rf $(VENV)
