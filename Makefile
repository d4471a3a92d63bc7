# lmkit: `make demo` runs the whole pipeline on the built-in corpus, `make test` the tests.
# Both set up .venv first. Override the Python or torch with e.g. `make setup PYTHON=python3.12`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# 2.13.0 is the CPU wheel this project is developed against; any torch >= 2.4 works.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo

.PHONY: setup test test-fast lint docs docs-check demo bench bench-gpu clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,all]"
	touch $@

# The linter and the docs build first (seconds): the house's style is checked in CI, as its layers are
# (tests/test_layers.py), and so are the docs' links and pages. pytest exits 5, failing this, when it collects no test.
# PYTEST_WORKERS processes share the tests (pytest-xdist; on 2 cores the suite took 7.4 min with 2, 10.2 min with 0,
# i.e. in this process alone); each sets torch's threads to its share of the cores (tests/conftest.py).
PYTEST_WORKERS ?= 2
test: setup lint docs-check
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check lmkit tests benchmarks examples

test-fast: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# The documentation site (MkDocs, Material theme) in site/: the flag reference regenerated from the options first.
# Strict: a broken link or anchor, a missing page or one left out of the navigation is an error (not with --quiet,
# which hides the warnings strict mode counts). Offline: no web fonts, no plugin that fetches.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
docs: setup
	$(BIN)/python -m lmkit.cli.reference docs/reference
	$(MKDOCS) build --strict
	@echo "site/index.html"

# What `make test` checks of the docs: the reference is current and the site builds (into build/, not site/).
docs-check: setup
	$(BIN)/python -m lmkit.cli.reference docs/reference --check
	$(MKDOCS) build --strict --site-dir build/docs-site

demo: setup
	$(MAKE) -C examples LMKIT="$(abspath $(BIN)/lmkit)" WORK="$(abspath $(DEMO_DIR))"
	$(BIN)/lmkit verify $(DEMO_DIR)/data
	$(BIN)/lmkit lineage $(DEMO_DIR)/student/final
	@for r in gpt bert bert-classifier bert-classifier-scratch classifier classifier-lora student sft chat imported-classifier arithmetic grpo dpo; do \
		echo "== $$r: $$($(BIN)/python -c "import json,sys; m=json.load(open(sys.argv[1]))['metrics']; \
		print(', '.join(f'{k} {v:.4g}' for k, v in m.items()))" $(DEMO_DIR)/reports/$$r/report.json)"; done
	@echo "(bert-classifier against bert-classifier-scratch: what pretraining buys this tiny BERT with 392 labels, one seed"
	@echo " each; over 8 seeds the two tie. With few labels pretraining pays: docs/pretraining-value.md has both, measured.)"
	$(BIN)/lmkit generate $(DEMO_DIR)/gpt/final "The for statement" --max-new-tokens 40 --temperature 0.8 --top-k 40 --echo
	$(BIN)/lmkit generate $(DEMO_DIR)/sft/final "$$(head -1 $(DEMO_DIR)/corpus/instructions-test.jsonl | \
		$(BIN)/python -c 'import json,sys; print(json.loads(sys.stdin.read())["prompt"])')" --temperature 0 \
		--max-new-tokens 40 --stop "\n" --echo
	@echo "== a conversation typed into lmkit chat (greedy; a held-out docstring), as its /save wrote it:"
	@rm -f $(DEMO_DIR)/transcript.jsonl
	@printf '%s\n' 'Here is a docstring:\' '\' 'Information about how to convert command line strings to Python objects.' \
		'What kind of object does it document?' '/save $(DEMO_DIR)/transcript.jsonl' | \
		$(BIN)/lmkit --quiet chat $(DEMO_DIR)/chat/final --temperature 0 --max-new-tokens 16 > /dev/null
	@$(BIN)/python -c "import json,sys; [print(m['role'] + ': ' + m['content'].replace(chr(10), ' / ')) \
		for m in json.loads(open(sys.argv[1]).read())['messages']]" $(DEMO_DIR)/transcript.jsonl
	@echo "pictures: $(DEMO_DIR)/curves.png, $(DEMO_DIR)/attention/attention.html, $(DEMO_DIR)/reports/bert-classifier/confusion.png, $(DEMO_DIR)/probe/probe.png, $(DEMO_DIR)/why/attribution.html"

# NANOGPT=path/to/nanoGPT/model.py (a clone of karpathy/nanoGPT) compares pretraining with nanoGPT itself;
# without it, with the nanoGPT-shaped baseline in benchmarks/pretrain.py. The last lines are the ratios against the peers.
bench: setup
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/preprocess_peer.py
	$(BIN)/python benchmarks/pretrain.py $(if $(NANOGPT),--nanogpt $(NANOGPT))
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/finetune_peer.py
	$(BIN)/python benchmarks/finetune.py --work $(DEMO_DIR)
	$(BIN)/python benchmarks/align.py --work $(DEMO_DIR)
	$(BIN)/python benchmarks/serve.py --checkpoint $(DEMO_DIR)/gpt/final
	$(BIN)/python benchmarks/summary.py

# On a GPU machine, which needs no .venv: the Python there with torch (docs/performance.md#a-gpu-run).
bench-gpu:
	bash benchmarks/gpu.sh

clean:
	rm -rf $(DEMO_DIR) benchmarks/out .pytest_cache site build/docs-site
