# cvpipe: `make run` runs the main job, `make test` the test suite; both set up .venv first if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cvpipe-installed
CONFIG ?= configs/example.yaml
export BENTOML_DO_NOT_TRACK := true

.PHONY: install run test test-all test-slow bench serve clean

install: $(STAMP)  ## virtual environment with CPU torch (pinned) and cvpipe with all extras

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints/cpu.txt torch
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[serve,s3,ray,openvino,dev]"
	touch $(STAMP)

run: install  ## the whole pipeline on the bundled example data
	$(BIN)/cvpipe run $(CONFIG)

serve: install  ## serve the latest packed model on http://127.0.0.1:3000
	$(BIN)/cvpipe serve --config $(CONFIG)

test: install  ## the default test suite (a few minutes)
	$(BIN)/pytest

test-slow: install  ## the slow end-to-end tests only
	$(BIN)/pytest -m slow

test-all: install  ## every test
	$(BIN)/pytest -m "slow or not slow"

bench: install  ## benchmarks (print ratios against baselines measured in the same run)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) store .pytest_cache
