"""Interop with Hugging Face transformers, both ways: ``lmkit import`` (a transformers directory as an
lmkit checkpoint, its tokenizer as a tokenizer artifact) and ``lmkit export`` (a checkpoint as a
transformers directory).

``families.py`` holds one weight-mapping table per family (llama/mistral/qwen2/qwen3, gpt2, bert),
used both ways; ``tokenizers.py`` imports tokenizers; ``import_stage.py`` and ``export_stage.py`` are
the stages; ``gguf_export.py`` and ``gguf_vocab.py`` write ``--format gguf`` (one model.gguf for llama.cpp, through
the same tables). An import is a ``checkpoint`` artifact; an export an ``export`` artifact: the target's
own files plus lmkit's manifest.json, so ``lmkit verify`` and ``lmkit lineage`` work on it.
"""
