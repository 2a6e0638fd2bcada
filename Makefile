# clipserve — the targets a newcomer needs. `make help` lists them.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
WORK    ?= work
STAMP   := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test lint typecheck proto clean bench-train

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install clipserve with [train,dev]

demo: $(STAMP)  ## synth data -> fine-tune -> eval -> ONNX bundle -> gRPC server -> Qdrant -> queries
	$(BIN)/clipserve demo --workdir $(WORK) $(DEMO_ARGS)

test: $(STAMP)  ## run the whole test suite (unit + integration)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff lint + format check, mypy on hand-written code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy training serving index cli

proto: $(STAMP)  ## regenerate the gRPC/protobuf stubs in proto/v1 from proto/v1/*.proto
	$(BIN)/python -m clipserve.proto.generate

bench-train: $(STAMP)  ## FN-filtered hard-negative benchmark -> docs/results/fn_benchmark.{json,md,png} (<= 45 min on 2 idle cores)
	$(BIN)/python bench/bench_train.py --work $(WORK)/bench-train --out docs/results $(BENCH_ARGS)

clean:  ## remove the work directory (keeps .venv)
	rm -rf $(WORK)
