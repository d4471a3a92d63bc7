"""Export lmkit checkpoints to other ecosystems (``lmkit export``); today Hugging Face transformers.

An export is an artifact (kind ``export``): the target's own files (config.json, model.safetensors,
tokenizer files ...) plus lmkit's manifest.json, so ``lmkit verify`` and ``lmkit lineage`` work on it
and the target ignores the extra file. ``hf.py`` holds the weight mapping; ``stage.py`` the stage.
The ``export`` kind is registered with the others in lmkit/artifacts/manifest.py.
"""
