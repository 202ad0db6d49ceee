# nldsl: `make demo` sets up and runs the main job; `make test` sets up and runs the test suite.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: install demo test test-fast gpu-check bench clean

$(STAMP): pyproject.toml
	@command -v dot >/dev/null || { echo "graphviz 'dot' is missing: apt-get install graphviz (or brew install graphviz)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to a CPU-capable release (any torch >= 2.5 works; on GPU machines keep yours)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.5"
	$(BIN)/pip install -q -e ".[test,bpe]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m nldsl.demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest -x -q -m "not slow" tests

gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis runs out
