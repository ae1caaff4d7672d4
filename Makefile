# LLM gateway: `make run` starts the sidecar locally, `make test` runs every gate.
# Both create .venv and install what is missing; nothing else needs to be pre-installed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= examples/gateway.yaml

.PHONY: help install run test lint format typecheck unit e2e render-envoy clean tools bench bench-overload proto image chaos soak

help:
	@echo "make run          start fake provider + processor + Envoy on $(CONFIG)"
	@echo "make test         install, then ruff + mypy + the whole pytest suite"
	@echo "make render-envoy regenerate envoy/envoy.yaml and envoy/xds/ from $(CONFIG)"
	@echo "make proto        regenerate llm_gateway/ (Python) from proto/llm_gateway/ (commit both)"
	@echo "make bench        plain Envoy vs the gateway, side by side (QUICK=1 for a short run)"
	@echo "make bench-overload  admitted requests' latency with and without processor.max_in_flight"
	@echo "make image        build the container image from Dockerfile without a daemon, then prove it"
	@echo "make chaos        kill -9 processor, provider, Redis, Envoy under load (docs/reliability.md)"
	@echo "make soak         endurance: 10 min of mixed traffic, memory leak verdict (SOAK_MINUTES=60 for the hour)"

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing python3-venv with apt"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
	  $(PYTHON) -m venv $(VENV); }

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@# xds-protos ships an old copy of opentelemetry/proto/ (no ScopeSpans); whichever of it and
	@# opentelemetry-proto pip installs last wins, so put opentelemetry-proto's files back.
	$(BIN)/python -m pip install -q --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	@$(BIN)/python -c 'from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope' \
	  || { echo "opentelemetry-proto is shadowed by an older copy (xds-protos)" >&2; exit 1; }
	@test -x "$$($(BIN)/python -c 'from extproc.dev.stack import find_envoy_binary; print(find_envoy_binary())')" \
	  || { echo "envoy binary missing after install" >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/extproc run-local --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

tools:
	@bash scripts/install-helm.sh
	@bash scripts/install-promtool.sh
	@bash scripts/install-redis.sh
	@bash scripts/install-bwrap.sh

unit: $(STAMP) tools
	$(BIN)/python -m pytest tests/unit

e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e

test: lint typecheck tools
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(filter 1,$(QUICK)),--quick)

bench-overload: $(STAMP)
	$(BIN)/python bench/overload.py

chaos: $(STAMP) tools
	$(BIN)/python bench/chaos.py

SOAK_MINUTES ?= 10
soak: $(STAMP) tools
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

# The freshness test (tests/unit/test_policy_proto_fresh.py) runs the same script on a temp dir.
proto: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/gen-proto.sh .

# Not part of `make test`: debootstraps a base once, then builds with buildah (root; minutes).
image:
	bash scripts/build-image.sh

render-envoy: $(STAMP)
	$(BIN)/extproc render-envoy --config $(CONFIG) --output envoy/envoy.yaml --xds-dir envoy/xds

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache *.egg-info
