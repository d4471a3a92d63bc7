# lmkit: `make demo` runs the whole pipeline on the built-in corpus, `make test` the tests.
# Both set up .venv first. Override the Python or torch with e.g. `make setup PYTHON=python3.12`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# 2.13.0 is the CPU wheel this project is developed against; any torch >= 2.4 works.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo

.PHONY: setup test test-fast demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,all]"
	touch $@

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

demo: setup
	$(MAKE) -C examples LMKIT="$(abspath $(BIN)/lmkit)" WORK="$(abspath $(DEMO_DIR))"
	$(BIN)/lmkit verify $(DEMO_DIR)/data
	$(BIN)/lmkit lineage $(DEMO_DIR)/labeled

bench: setup
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/pretrain.py

clean:
	rm -rf $(DEMO_DIR) benchmarks/out .pytest_cache
