# lmkit: `make demo` runs the whole pipeline on the built-in corpus, `make test` the tests.
# Both set up .venv first. Override the Python or torch with e.g. `make setup PYTHON=python3.12`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# 2.13.0 is the CPU wheel this project is developed against; any torch >= 2.4 works.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo

.PHONY: setup test test-fast lint demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,all]"
	touch $@

# The linter first (seconds): the house's style is checked in CI, as its layers are (tests/test_layers.py).
test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check lmkit tests benchmarks examples

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

demo: setup
	$(MAKE) -C examples LMKIT="$(abspath $(BIN)/lmkit)" WORK="$(abspath $(DEMO_DIR))"
	$(BIN)/lmkit verify $(DEMO_DIR)/data
	$(BIN)/lmkit lineage $(DEMO_DIR)/student/final
	@for r in gpt bert bert-classifier bert-classifier-scratch classifier classifier-lora student sft imported-classifier; do \
		echo "== $$r: $$($(BIN)/python -c "import json,sys; m=json.load(open(sys.argv[1]))['metrics']; \
		print(', '.join(f'{k} {v:.4g}' for k, v in m.items()))" $(DEMO_DIR)/reports/$$r/report.json)"; done
	$(BIN)/lmkit generate $(DEMO_DIR)/gpt/final "The for statement" --max-new-tokens 40 --temperature 0.8 --top-k 40 --echo
	$(BIN)/lmkit generate $(DEMO_DIR)/sft/final "$$(head -1 $(DEMO_DIR)/corpus/instructions-test.jsonl | \
		$(BIN)/python -c 'import json,sys; print(json.loads(sys.stdin.read())["prompt"])')" --temperature 0 \
		--max-new-tokens 40 --stop "\n" --echo
	@echo "pictures: $(DEMO_DIR)/curves.png, $(DEMO_DIR)/attention/attention.html, $(DEMO_DIR)/reports/bert-classifier/confusion.png, $(DEMO_DIR)/probe/probe.png, $(DEMO_DIR)/why/attribution.html"

# NANOGPT=path/to/nanoGPT/model.py (a clone of karpathy/nanoGPT) compares pretraining with nanoGPT itself;
# without it, with the nanoGPT-shaped baseline in benchmarks/pretrain.py. The last lines are the three ratios.
bench: setup
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/pretrain.py $(if $(NANOGPT),--nanogpt $(NANOGPT))
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/finetune.py --work $(DEMO_DIR)
	$(BIN)/python benchmarks/serve.py --checkpoint $(DEMO_DIR)/gpt/final
	$(BIN)/python benchmarks/summary.py

clean:
	rm -rf $(DEMO_DIR) benchmarks/out .pytest_cache
