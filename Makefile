# One entry point for developers. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE_DIR ?= $(HOME)/.local/state/modelship/dev-cluster
PYTEST_ARGS ?=

.PHONY: help venv lock deps-newest tools demo down status lint test test-fast lint-chart bench-plane bench-server bench-ghz bench-gofront bench-apply bench-operator bench-autoscale bench-optimize bench-olive-corpus bench-fusion gpu-check gpu-check-prepare gpu-check-device images clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The venv installs exactly the locked versions (hashes checked), then the project itself
# without dependencies, so nothing is resolved on the machine: plain pip, no uv needed.
$(BIN)/modelship: pyproject.toml requirements/dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

venv: $(BIN)/modelship  ## create .venv from requirements/dev.txt (locked, hashed) and modelship itself

# uv resolves the locks (one universal resolution per file, for every Python >= 3.11 and platform;
# the image locks within dev.txt's versions, so the images run what the tests ran);
# it lives in its own venv in the cache, pinned, so `make venv` never needs it.
UV_VERSION ?= 0.13.9
UV := $(HOME)/.cache/modelship/uv-$(UV_VERSION)/bin/uv
LOCK_FLAGS := --quiet --universal --fork-strategy fewest --python-version 3.11 --generate-hashes \
	--constraints requirements/pins.txt --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)

$(UV):
	$(PYTHON) -m venv $(HOME)/.cache/modelship/uv-$(UV_VERSION)
	$(HOME)/.cache/modelship/uv-$(UV_VERSION)/bin/pip install --quiet uv==$(UV_VERSION)

lock: $(UV)  ## re-resolve requirements/*.txt from pyproject.toml and pins.txt (UPGRADE=1: newest versions too)
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml --extra operator --extra server --extra dev -o requirements/dev.txt
	$(UV) pip compile $(LOCK_FLAGS) -c requirements/dev.txt pyproject.toml --extra operator -o requirements/operator.txt
	$(UV) pip compile $(LOCK_FLAGS) -c requirements/dev.txt pyproject.toml --extra server -o requirements/server.txt
	$(UV) pip compile $(LOCK_FLAGS) -c requirements/dev.txt pyproject.toml --extra gpu -o requirements/server-gpu.txt
	$(UV) pip compile $(LOCK_FLAGS) benchmarks/requirements-olive.in -o benchmarks/requirements-olive.txt
	$(PYTHON) tests/packaging/locks.py requirements

NEWEST_VENV ?= /tmp/modelship-newest

deps-newest:  ## the newest versions pyproject.toml allows, in a temp venv: what changed, and what breaks in the fast tests
	hack/deps_newest.sh $(PYTHON) $(NEWEST_VENV) requirements/dev.txt

tools: venv  ## build the control-plane binaries from Go modules (cached in ~/.cache/modelship)
	$(BIN)/python -m modelship.devcluster.toolchain

demo: tools  ## the main job: local cluster, operator, a ModelService optimized, rolled out and queried for real
	$(BIN)/modelship demo --state-dir $(STATE_DIR)

down: venv  ## stop the local cluster started by `make demo`
	$(BIN)/modelship dev-cluster down --state-dir $(STATE_DIR)

status: venv  ## show the local cluster's processes and nodes
	$(BIN)/modelship dev-cluster status --state-dir $(STATE_DIR)

lint: venv  ## ruff, mypy and the import layers (import-linter); configured in pyproject.toml
	$(BIN)/ruff check operator server_image tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint tools  ## lint, then every test (unit, server, and on the real local control plane)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: venv  ## only the tests that need no control plane
	$(BIN)/pytest -q -m 'not cluster' $(PYTEST_ARGS)

lint-chart: tools  ## helm lint --strict the operator chart
	$$($(BIN)/python -c 'from modelship.devcluster.toolchain import binary_paths; print(binary_paths()["helm"])') \
		lint --strict charts/modelship

bench-plane: tools  ## warm start-to-ready time and memory of the local plane (docs/dev-cluster.md)
	$(BIN)/python benchmarks/dev_cluster.py --runs 5

bench-server: venv  ## raw ONNX Runtime vs modelship-server (docs/server-benchmarks.md has the full command)
	$(BIN)/python server_image/bench/compare.py --seconds 5

KSERVE_VENV ?= /tmp/modelship-kserve
MLSERVER_VENV ?= /tmp/modelship-mlserver

bench-ghz: venv  ## gRPC throughput at 8 clients with ghz (Go): modelship-server vs KServe vs MLServer (docs/server-benchmarks.md)
	@test -x $(KSERVE_VENV)/bin/python || ($(PYTHON) -m venv $(KSERVE_VENV) && \
		$(KSERVE_VENV)/bin/pip install --quiet "kserve==0.21.*" onnxruntime numpy)
	@test -x $(MLSERVER_VENV)/bin/mlserver || ($(PYTHON) -m venv $(MLSERVER_VENV) && \
		$(MLSERVER_VENV)/bin/pip install --quiet "mlserver==1.7.1" "uvloop<0.22" onnxruntime numpy)
	$(BIN)/python server_image/bench/ghz_compare.py --seconds 5 --rounds 2 --batch 1 8 \
		--kserve-python $(KSERVE_VENV)/bin/python --mlserver-python $(MLSERVER_VENV)/bin/python

bench-gofront: venv  ## the Go gRPC front-end prototype vs modelship-server vs KServe, and grpc-go's empty-call floor vs grpcio's (docs/server-benchmarks.md)
	@test -x $(KSERVE_VENV)/bin/python || ($(PYTHON) -m venv $(KSERVE_VENV) && \
		$(KSERVE_VENV)/bin/pip install --quiet "kserve==0.21.*" onnxruntime numpy)
	$(BIN)/python server_image/bench/ghz_compare.py --seconds 4 --rounds 2 --batch 1 --gofront --floor \
		--kserve-python $(KSERVE_VENV)/bin/python

bench-apply: tools  ## apply -> Ready -> first inference on the local cluster, optimization off and on (docs/end-to-end.md)
	$(BIN)/python benchmarks/apply_to_inference.py --runs 3 --json docs/benchmarks/apply-to-inference.json

bench-operator: tools  ## 500 ModelServices on the local plane (docs/benchmarks/operator-scale.md)
	$(BIN)/python tests/operator/scale_benchmark.py --count 500 --json docs/benchmarks/operator-scale-500.json

OLIVE_VENV ?= /tmp/modelship-olive

# Olive's venv (torch included, several GB): built once from the hashed lock; a stale one is re-synced.
$(OLIVE_VENV)/.installed: benchmarks/requirements-olive.txt
	@test -x $(OLIVE_VENV)/bin/python || $(PYTHON) -m venv $(OLIVE_VENV)
	$(OLIVE_VENV)/bin/pip install --quiet --require-hashes -r benchmarks/requirements-olive.txt
	@touch $@

bench-optimize: venv $(OLIVE_VENV)/.installed  ## modelship optimize vs Microsoft Olive on MiniLM and a CNN, 100 MB Job wall time (docs/optimize-benchmarks.md)
	$(BIN)/python benchmarks/optimize_models.py --olive-python $(OLIVE_VENV)/bin/python --repeat 2 --job-budget-seconds 600 120

bench-olive-corpus: venv $(OLIVE_VENV)/.installed  ## Olive's pick on every corpus model through our gate and timing, beside ours (docs/real-models.md)
	$(BIN)/python benchmarks/olive_corpus.py --olive-python $(OLIVE_VENV)/bin/python \
		--json docs/benchmarks/olive-corpus.json --markdown

bench-fusion: venv $(OLIVE_VENV)/.installed  ## our transformer fusion vs ONNX Runtime's optimizer as optimum calls it, MiniLM exports (docs/optimize-benchmarks.md)
	taskset -c 1 $(BIN)/python benchmarks/fusion_vs_ort.py --ort-python $(OLIVE_VENV)/bin/python \
		--json docs/benchmarks/fusion-vs-ort.json

bench-autoscale: venv  ## builtin autoscaler vs CPU HPA vs KEDA polling on one replayed trace (docs/autoscaling.md)
	$(BIN)/python benchmarks/autoscale_trace.py --json docs/benchmarks/autoscale-trace.json

gpu-check:  ## the one-shot GPU check on this machine (needs an NVIDIA GPU; says so and exits 0 without one; docs/gpu.md)
	$(PYTHON) benchmarks/gpu_check.py run --out gpu-check-results $(GPU_CHECK_ARGS)

gpu-check-prepare: venv  ## bundle the wheels and models a GPU machine without registries needs, print the device calls (docs/gpu.md)
	$(BIN)/python benchmarks/gpu_check.py prepare

gpu-check-device:  ## on the lent GPU machine, after the parts calls: join, install, run the check into $$OUT (docs/gpu.md)
	bash benchmarks/gpu_check_device.sh .gpu-bundle/small $(GPU_CHECK_ARGS)

images:  ## build the serving and operator images (needs a Docker engine; none runs on the dev VM)
	docker build -f server_image/Dockerfile -t ghcr.io/modelship/modelship-server:0.1.0 .
	docker build -f operator/Dockerfile -t ghcr.io/modelship/modelship-operator:0.1.0 .

clean:  ## remove the venv and caches in the repo (not the binary cache)
	rm -rf $(VENV) .pytest_cache build *.egg-info
