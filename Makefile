# One entry point for developers. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE_DIR ?= $(HOME)/.local/state/modelship/dev-cluster
PYTEST_ARGS ?=

.PHONY: help venv tools demo down status test test-fast clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/modelship: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/modelship  ## create .venv with modelship and its dev dependencies

tools: venv  ## build the control-plane binaries from Go modules (cached in ~/.cache/modelship)
	$(BIN)/python -m modelship.devcluster.toolchain

demo: tools  ## the main job: bring up the local cluster and show its nodes
	$(BIN)/modelship dev-cluster up --state-dir $(STATE_DIR)
	@echo
	KUBECONFIG=$(STATE_DIR)/kubeconfig $(STATE_DIR)/bin/kubectl get nodes -L nvidia.com/gpu.product
	@echo
	@echo "Try it:  export KUBECONFIG=$(STATE_DIR)/kubeconfig PATH=$(STATE_DIR)/bin:\$$PATH"
	@echo "Stop it: make down"

down: venv  ## stop the local cluster started by `make demo`
	$(BIN)/modelship dev-cluster down --state-dir $(STATE_DIR)

status: venv  ## show the local cluster's processes and nodes
	$(BIN)/modelship dev-cluster status --state-dir $(STATE_DIR)

test: tools  ## run every test (unit, server, and on the real local control plane)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: venv  ## only the tests that need no control plane
	$(BIN)/pytest -q -m 'not cluster' $(PYTEST_ARGS)

clean:  ## remove the venv and caches in the repo (not the binary cache)
	rm -rf $(VENV) .pytest_cache build *.egg-info
