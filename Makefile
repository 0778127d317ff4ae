# cvpipe: `make run` runs the main job, `make test` the test suite; both set up .venv first if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cvpipe-installed
CONFIG ?= configs/example.yaml
export BENTOML_DO_NOT_TRACK := true

.PHONY: install run test test-all test-slow bench serve measure clean labelstudio

install: $(STAMP)  ## virtual environment with CPU torch (pinned) and cvpipe with all extras

# pip prints what it fetches and installs (no silent minutes); the first install takes a few minutes.
$(STAMP): pyproject.toml constraints/cpu.txt
	@echo "==> [1/3] virtual environment $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] PyTorch for CPU (pinned in constraints/cpu.txt)"
	$(BIN)/pip install --progress-bar on -c constraints/cpu.txt torch
	@echo "==> [3/3] cvpipe and its extras: BentoML, ONNX Runtime, OpenVINO, s3fs, Ray, test tools"
	$(BIN)/pip install --progress-bar on -c constraints/cpu.txt -e ".[serve,s3,ray,openvino,dev]"
	touch $(STAMP)
	@echo "==> installed: $(BIN)/cvpipe (or 'source $(BIN)/activate', then 'cvpipe')"

run: install  ## the whole pipeline on the bundled example data
	$(BIN)/cvpipe run $(CONFIG)

serve: install  ## serve the latest packed model on http://127.0.0.1:3000
	$(BIN)/cvpipe serve --config $(CONFIG)

test: install  ## the default test suite (under 4 minutes on 2 cores: one pytest-xdist worker per CPU)
	$(BIN)/pytest

# The slow tests run one at a time (-n 0): several measure a service's memory or latency under a load they make.
test-slow: install  ## the slow end-to-end tests only
	$(BIN)/pytest -m slow -n 0

test-all: install  ## every test
	$(BIN)/pytest -m "slow or not slow" -n 0

# bench_second_set.py fetches the DeepForest wheel from PyPI (or takes --wheel): run it on its own.
bench: install  ## benchmarks (print ratios against baselines measured in the same run)
	for b in benchmarks/bench_*.py; do [ $$b = benchmarks/bench_second_set.py ] || $(BIN)/python $$b || exit 1; done

# Label Studio pins Django, numpy 2.2, OpenCV and pyarrow versions that clash with cvpipe's: its own venv.
LS_VENV ?= .venv-labelstudio
labelstudio: $(LS_VENV)/bin/label-studio  ## Label Studio server in its own venv (for `cvpipe labels push` and its test)

$(LS_VENV)/bin/label-studio:
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --progress-bar on "label-studio==1.23.2"

measure:  ## time `make run` and `make test` from a clean clone of HEAD, install included
	bash benchmarks/measure_commands.sh

clean:
	rm -rf $(VENV) store .pytest_cache
