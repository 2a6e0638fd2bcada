# clipserve — the targets a newcomer needs. `make help` lists them.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
WORK    ?= work
STAMP   := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-train

.DEFAULT_GOAL := help
TRITON_ENV := .triton-env
PEER_VENV := .bench-venv/infinity

.PHONY: help install demo test lint typecheck proto clean node-deps deploy-test triton-env bench-peer-venv bench-serve bench-train fn-ceiling

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# What `make demo` needs (clipserve + [train]); the tests and tools add [dev] on top of it, so
# a first `make demo` does not wait for linters, Triton's client or OpenVINO.
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train]'
	touch $@

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,dev]'
	touch $@

install: $(STAMP)  ## create .venv and install clipserve with [train,dev]

demo: $(RUN_STAMP)  ## synth data -> fine-tune -> eval -> ONNX bundle -> gRPC server -> Qdrant -> queries
	$(BIN)/clipserve demo --workdir $(WORK) $(DEMO_ARGS)

test: $(STAMP) node-deps $(TRITON_ENV)/.installed  ## run the whole test suite (unit + integration)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff lint + format check, mypy on hand-written code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy training serving index cli

proto: $(STAMP)  ## regenerate the gRPC/protobuf stubs in proto/v1 from proto/v1/*.proto
	$(BIN)/python -m clipserve.proto.generate

bench-train: $(STAMP)  ## FN-filtered hard-negative benchmark -> docs/results/fn_benchmark.{json,md,png} (about 36 min on 2 cores, plus the install)
	$(BIN)/python bench/bench_train.py --work $(WORK)/bench-train --out docs/results $(BENCH_ARGS)

fn-ceiling: $(STAMP)  ## after bench-train: how well could any rule on the embeddings detect false negatives? -> docs/results/fn_ceiling.json (about 6 min)
	$(BIN)/python bench/fn_ceiling.py --work $(WORK)/bench-train --out docs/results --train-guide 400

clean:  ## remove the work directory (keeps .venv)
	rm -rf $(WORK)

# -- deploy (issue 8) ------------------------------------------------------------------------------
NODE_EXAMPLE := docs/clients/node
NODE_STAMP   := $(NODE_EXAMPLE)/node_modules/.installed

$(NODE_STAMP): $(NODE_EXAMPLE)/package.json $(NODE_EXAMPLE)/package-lock.json
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing nodejs and npm with apt-get ..."; \
			apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; \
		fi; \
	fi
	@if command -v npm >/dev/null; then \
		cd $(NODE_EXAMPLE) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "node-deps: node/npm not available; the Node.js client test will be skipped"; \
	fi

node-deps: $(NODE_STAMP)  ## npm deps of the Node.js client example (node via apt if missing)

deploy-test: $(STAMP)  ## build the CPU serving image on a local Debian base and smoke-test it (root, docker)
	$(BIN)/python deploy/docker/smoke_test.py

$(TRITON_ENV)/.installed: | $(STAMP)
	$(BIN)/python tests/triton_local.py

triton-env: $(TRITON_ENV)/.installed  ## tritonserver (nvidia-pytriton) + numpy 1.26 + onnxruntime in .triton-env, for tests

$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --disable-pip-version-check 'infinity-emb[server,torch,vision]==0.0.78' aiohttp
	touch $@

bench-peer-venv: $(PEER_VENV)/.installed  ## infinity-emb 0.0.78 in its own venv (the load-test peer)

bench-serve: $(STAMP) $(PEER_VENV)/.installed  ## load test: clipserve vs raw ORT vs infinity-emb (ViT-B-32)
	$(BIN)/python bench/bench_serve.py $(BENCH_ARGS)
