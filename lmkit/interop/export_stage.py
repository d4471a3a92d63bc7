"""``lmkit export``: a checkpoint written as another library's model directory, as an artifact.

``--format hf``: a transformers directory (hf_export.py); ``--format gguf``: one model.gguf file for llama.cpp
(gguf_export.py). The directory is built in a temporary sibling, checked (transformers loads it and must give
lmkit's logits and token ids; the GGUF file is read back tensor by tensor), sealed with a manifest naming the
source checkpoint, then renamed into place: a refused or failed export leaves nothing behind.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from lmkit import __version__, artifacts
from lmkit import config as config_lib
from lmkit.checkpoint import read_checkpoint
from lmkit.errors import UserError
from lmkit.interop import gguf_export, gguf_vocab
from lmkit.interop import hf_export as hf
from lmkit.interop.export_config import GGUF_DEFAULT_TYPE, ExportConfig
from lmkit.progress import reporter

# Written beside the target's files: where the model comes from and how lmkit fed it, for people who
# meet the directory without lmkit (the manifest says the same for lmkit).
EXPORT_INFO = "lmkit_export.json"


def run(config: ExportConfig) -> artifacts.Artifact:
    checkpoint = read_checkpoint(config.checkpoint)
    if config.format == "gguf":
        return _run_gguf(config, checkpoint)
    problems = hf.refusals(checkpoint)
    if problems:
        raise UserError("\n".join(problems))
    transformers = hf.import_transformers()
    target = hf.target_for(checkpoint)
    recipe = _recipe(config, checkpoint)
    with artifacts.ArtifactWriter(config.out, "export", recipe, force=config.force) as writer:
        if writer.up_to_date:
            return writer.existing
        model = checkpoint.inference_model()
        reporter.info(f"exporting {checkpoint.path} as {target.architecture} ({checkpoint.model_config.n_layer} "
                      f"layers, d_model {checkpoint.model_config.d_model})"
                      + (", without the pooler and sentence head that only pretraining uses"
                         if checkpoint.model_config.sentence_head and not target.classifier else ""))
        with hf.quiet_transformers(transformers):
            parameters = hf.write_model(writer.tmp, checkpoint, model, target, transformers)
            hf.write_tokenizer(writer.tmp, checkpoint, target, transformers)
            _write_info(writer.tmp, checkpoint, target)
            difference = None
            if config.check:
                reporter.info("checking: transformers loads the export and must agree with lmkit")
                difference = hf.check_export(writer.tmp, checkpoint, model, target, transformers)
        stats = {"format": config.format, "architecture": target.architecture, "model_type": target.model_type,
                 "parameters": parameters, "transformers_version": transformers.__version__,
                 "checked": config.check, "max_abs_logit_difference": difference}
        parents = [artifacts.describe_parent("checkpoint", checkpoint.artifact, writer.out)]
        return writer.commit(config_lib.as_dict(config), {"artifacts": parents, "files": []}, stats)


def _recipe(config: ExportConfig, checkpoint) -> str:
    identity = {**config_lib.identity_dict(config), "checkpoint": checkpoint.artifact.id}
    if config.format != "gguf" and config.gguf_type == GGUF_DEFAULT_TYPE:
        del identity["gguf_type"]  # not read by this format: an export made before the flag existed stays up to date
    return artifacts.make_recipe("export", identity, [], [{"role": "checkpoint", "id": checkpoint.artifact.id}])


def _run_gguf(config: ExportConfig, checkpoint) -> artifacts.Artifact:
    problems = gguf_export.refusals(checkpoint)
    if problems:
        raise UserError("\n".join(problems))
    gguf = gguf_export.import_gguf()
    target = gguf_export.target_for(checkpoint)
    vocab = gguf_vocab.vocab_for(checkpoint)  # a tokenizer llama.cpp cannot read is refused before any work
    with artifacts.ArtifactWriter(config.out, "export", _recipe(config, checkpoint), force=config.force) as writer:
        if writer.up_to_date:
            return writer.existing
        model = checkpoint.inference_model()
        reporter.info(f"exporting {checkpoint.path} as llama.cpp's {target.arch} in {config.gguf_type} "
                      f"({checkpoint.model_config.n_layer} layers, d_model {checkpoint.model_config.d_model})")
        if vocab.caveat is not None:
            reporter.warn(f"{checkpoint.path}: {vocab.caveat}")
        path = writer.tmp / gguf_export.MODEL_FILE
        written = gguf_export.write(path, checkpoint, model, target, vocab, config.gguf_type, gguf)
        difference = None
        if config.check:
            reporter.info("checking: the file read back must hold the checkpoint's tensors and vocabulary")
            difference = gguf_export.check_file(path, written, vocab, target, checkpoint, model, gguf)
        stats = {"format": "gguf", "architecture": target.arch, "gguf_type": config.gguf_type,
                 "parameters": sum(values.size for placed, values, _type in written.values()
                                   if placed.hf_name is not None),
                 "bytes": path.stat().st_size, "tokenizer": vocab.model + (f" ({vocab.pre})" if vocab.pre else ""),
                 "bos_before_prompt": vocab.framing.bos if vocab.framing.add_bos else None,
                 "chat_template": checkpoint.chat is not None,
                 "gguf_version": version("gguf"), "checked": config.check, "max_abs_logit_difference": difference}
        parents = [artifacts.describe_parent("checkpoint", checkpoint.artifact, writer.out)]
        return writer.commit(config_lib.as_dict(config), {"artifacts": parents, "files": []}, stats)


def _write_info(directory: Path, checkpoint, target: hf.Target) -> None:
    info = {
        "source_checkpoint": {"id": checkpoint.artifact.id, "path": str(checkpoint.path.resolve())},
        "lmkit_version": __version__,
        "architecture": target.architecture,
        "objective": checkpoint.objective,
        "input_format": _input_format(checkpoint, target),
    }
    if checkpoint.head is not None:
        info["labels"], info["pooling"] = checkpoint.labels, checkpoint.head["pooling"]
    if checkpoint.template is not None:
        info["prompt_template"] = checkpoint.template  # SFT: "{prompt}" marks the instruction
    if checkpoint.chat is not None:  # the template itself is tokenizer_config.json's chat_template
        info["chat"] = {"end_of_turn": checkpoint.chat.end_of_turn, "stop_ids": list(checkpoint.stop_ids),
                        "system_prompt": checkpoint.chat.system,
                        "input": "tokenizer.apply_chat_template(messages, add_generation_prompt=True) gives lmkit's "
                                 "ids; generate stops at generation_config.json's eos_token_id list"}
    (directory / EXPORT_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")


def _input_format(checkpoint, target: hf.Target) -> str:
    specials = checkpoint.specials
    if not target.classifier:
        start = "" if specials.start is None else f"; lmkit starts a text with id {specials.start}"
        return f"token ids as the tokenizer gives them with add_special_tokens=False{start}"
    if checkpoint.model_config.arch == "bert":
        layout = f"[CLS] tokens [SEP] (ids {specials.cls}, {specials.sep})"
    else:
        layout = "the tokens then </s> (id 3)" if hf.classifier_appends_eos() else "the tokens alone"
    return f"{layout}, right-padded with id {specials.pad}, as the exported tokenizer gives them with padding=True"
