"""``lmkit import``: a local Hugging Face model directory as an lmkit checkpoint artifact.

``config.json`` picks the family (families.py) and becomes a ModelConfig; the safetensors weights are
renamed by the family's table (the same one export uses) and loaded into the lmkit model; the
tokenizer becomes the checkpoint's nested tokenizer artifact (``CKPT/tokenizer``, which ``lmkit
preprocess --tokenizer`` reuses); transformers then loads the same directory and its logits must equal
lmkit's before anything is committed. A directory with a tokenizer and no config.json imports as a
tokenizer artifact alone. The manifest's lineage lists every source file with its hash.

Pickled weights (``pytorch_model.bin``) are refused unless ``--trust-pickle``, and even then loaded
with ``torch.load(weights_only=True)``, which builds tensors and never runs code from the file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lmkit import artifacts
from lmkit import config as config_lib
from lmkit.checkpoint import TrainerState
from lmkit.data import conversations
from lmkit.data.chat_template import ChatFormat, check_template
from lmkit.data.jsonl import read_text
from lmkit.errors import ConfigError, UserError
from lmkit.interop import tokenizers as hf_tokenizers
from lmkit.interop.families import FAMILY_OF_TYPE, Family, supported_architectures
from lmkit.interop.hf_export import TOLERANCE, import_transformers, quiet_transformers
from lmkit.interop.import_config import ImportConfig
from lmkit.models import build_model, count_parameters
from lmkit.models.config import ModelConfig
from lmkit.progress import reporter
from lmkit.tokenizer import load as load_tokenizer
from lmkit.training.checkpoint import write_checkpoint

SAFETENSORS, INDEX, PICKLE = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
# Tensors a transformers file may hold that lmkit rebuilds or ties: attention-mask buffers of old GPT-2
# files, and output projections tied to the embeddings.
_DERIVED = (".attn.bias", ".attn.masked_bias", "position_ids", "rotary_emb.inv_freq")
# BERT's decoder bias is saved twice: read as one of them, the other must be the same tensor or unused.
_BIAS_TWINS = {"cls.predictions.bias": "cls.predictions.decoder.bias",
               "cls.predictions.decoder.bias": "cls.predictions.bias"}
# Heads lmkit has no use for: BERT's next-sentence classifier (BertForPreTraining files).
_UNUSED = ("cls.seq_relationship.",)
_LEGACY = {"gamma": "weight", "beta": "bias"}


def run(config: ImportConfig) -> artifacts.Artifact:
    source = Path(config.source)
    if not source.is_dir():
        raise UserError(f"{source}: not a directory (lmkit import reads a local Hugging Face model directory: "
                        "config.json, model.safetensors and the tokenizer files; it downloads nothing)")
    transformers = import_transformers("lmkit import")
    if not (source / "config.json").is_file():
        if hf_tokenizers.has_tokenizer(source):
            return _import_tokenizer_only(config, source, transformers)
        raise UserError(f"{source}/config.json: not found (a Hugging Face model directory has one)")
    hf = _read_json(source / "config.json")
    family, model_type, architecture = _family(hf, source)
    where = f"{source}/config.json"
    try:
        fields = family.from_hf(hf, where)
    except KeyError as exc:
        raise UserError(f"{where}: lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a null, a string where a number belongs ...
        raise UserError(f"{where}: a setting has the wrong type ({exc})") from None
    weight_files = _weight_files(source, config.trust_pickle)
    tensors = _read_tensors(weight_files)
    tensors = _with_prefix(tensors, family)
    if family.name == "bert":
        fields["pooler"] = any(name.startswith("bert.pooler.") for name in tensors)
    try:
        model_config = ModelConfig(**fields)
    except ConfigError as exc:
        raise UserError(f"{where}: describes a model lmkit cannot build ({'; '.join(exc.problems)})") from None
    if not hf_tokenizers.has_tokenizer(source):
        raise UserError(f"{source}: has no tokenizer (tokenizer.json, tokenizer.model or vocab files); an lmkit "
                        "checkpoint carries its tokenizer")
    chat_files = [source / name for name in hf_tokenizers.CHAT_FILES if (source / name).is_file()]
    files = [artifacts.describe_file(path) for path in [source / "config.json", *weight_files,
                                                         *hf_tokenizers.source_files(source), *chat_files]]
    if config.chat_template:
        files.append({**artifacts.describe_file(config.chat_template), "role": "chat_template"})
    recipe = artifacts.make_recipe("checkpoint", {"import": config_lib.identity_dict(config)}, files, [])
    with artifacts.ArtifactWriter(config.out, "checkpoint", recipe, force=config.force) as writer:
        if writer.up_to_date:
            return writer.existing
        reporter.info(f"importing {source} ({architecture}: {model_config.family}, {model_config.n_layer} layers, "
                      f"d_model {model_config.d_model})")
        model, fresh = _load_model(model_config, family, tensors, source, architecture)
        with tempfile.TemporaryDirectory(prefix=".import-tokenizer-", dir=writer.tmp) as scratch:
            with quiet_transformers(transformers):
                tokenizer = hf_tokenizers.import_tokenizer(source, Path(scratch) / "tokenizer", transformers)
            loaded = load_tokenizer(tokenizer.path)
            _check_vocabulary(loaded.vocab_size, model_config, source)
            objective = "mlm" if model_config.arch == "bert" else "clm"
            extra = {"imported": {"from": str(source.resolve()), "architecture": architecture,
                                  "model_type": model_type}}
            if objective == "clm":
                with quiet_transformers(transformers):
                    extra.update(chat_extra(config, source, loaded, model_config, transformers))
            difference = None
            if config.check:
                reporter.info("checking: transformers loads the directory and must agree with lmkit")
                with quiet_transformers(transformers):
                    difference = _check(model, source, architecture, model_config, transformers,
                                        tokenizer.stats["specials"]["pad"])
                    if "chat" in extra:
                        check_chat(ChatFormat.from_dict(extra["chat"]), loaded, source, transformers)
            version = write_checkpoint(writer.tmp, model, model_config, objective,
                                       ({}, {"optimizers": [], "keys": "index"}), TrainerState(), tokenizer, extra)
            parents = [{"role": "tokenizer", "path": "tokenizer", "id": tokenizer.id}]
        stats = {"imported": True, "architecture": architecture, "model_type": model_type, "family": family.name,
                 "objective": objective, "arch": model_config.arch, "parameters": count_parameters(model),
                 "vocab_size": model_config.vocab_size, "initialized": fresh, "step": 0, "tokens": 0,
                 "resumable": False, "checked": config.check, "max_abs_logit_difference": difference,
                 "transformers_version": transformers.__version__, "chat": "chat" in extra}
        return writer.commit(config_lib.as_dict(config), {"artifacts": parents, "files": files}, stats,
                             version)


def generation_stop_ids(source: Path, vocab_size: int) -> list[int]:
    """The ids generation_config.json's eos_token_id lists (an id or a list: Llama 3's three, an instruct
    model's end of turn), each below the vocabulary size."""
    path = source / "generation_config.json"
    if not path.is_file():
        return []
    value = _read_json(path).get("eos_token_id")
    ids = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids):
        raise UserError(f"{path}: eos_token_id must be token ids below the vocabulary size {vocab_size}, got {value!r}")
    return sorted(set(ids))


def chat_extra(config: ImportConfig, source: Path, tokenizer, model_config: ModelConfig, transformers: Any
               ) -> dict[str, Any]:
    """model.json's "chat" (the template, --chat-template or the tokenizer's own, its variables, the end-of-turn
    token) and "stop" (generation_config.json's eos ids, the end of turn): empty for a model without a template."""
    stop = generation_stop_ids(source, model_config.vocab_size)
    template, variables = hf_tokenizers.chat_template_of(source, transformers)
    where = f"{source} (its chat template)"
    if config.chat_template:
        template, where = read_text(config.chat_template), f"--chat-template {config.chat_template}"
    if template is None:
        return {"stop": stop} if stop else {}
    try:
        check_template(template, where)
        chat = ChatFormat(template, variables)
        end = conversations.end_of_turn(chat, tokenizer, where)
    except UserError as exc:
        if config.chat_template:
            raise
        reporter.warn(f"{exc}; imported without its chat template (a text model)")
        return {"stop": stop} if stop else {}
    chat = ChatFormat(template, variables, None, end)
    if end is None:
        reporter.warn(f"{where}: ends an assistant turn with no special token; replies stop at "
                      + (f"generation_config.json's eos ids {stop}" if stop else "the end-of-text token only"))
    else:
        reporter.info(f"chat model: replies end at {tokenizer.id_to_piece(end)!r} (id {end})"
                      + (f"; generation_config.json's eos ids {stop} stop them too" if stop else ""))
    return {"chat": chat.to_dict(), "stop": sorted({*stop, *([end] if end is not None else [])})}


# Conversations the import check renders with lmkit and with transformers: a system prompt, several turns.
PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3 + 3?"}],
)


def check_chat(chat: ChatFormat, tokenizer, source: Path, transformers: Any) -> None:
    """lmkit's ids of probe conversations must be apply_chat_template's (with the generation prompt)."""
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    compared = 0
    for conversation in PROBE_CONVERSATIONS:
        try:
            theirs = theirs_tokenizer.apply_chat_template(conversation, chat_template=chat.template,
                                                          add_generation_prompt=True, tokenize=True,
                                                          return_dict=False)
        except Exception:  # noqa: BLE001 -- a template may refuse a probe (no system role): nothing to compare
            continue
        compared += 1
        ours = conversations.prompt_ids(conversation, chat, tokenizer, "the probe conversation")
        if list(theirs) != ours:
            raise UserError(f"{source}: lmkit renders and tokenizes a conversation differently from transformers' "
                            f"apply_chat_template ({ours[:12]} vs {list(theirs)[:12]}); nothing was written")
    if not compared:
        reporter.warn(f"{source}: its chat template refused every probe conversation, so lmkit's rendering of it "
                      "could not be compared with transformers'")


def _import_tokenizer_only(config: ImportConfig, source: Path, transformers: Any) -> artifacts.Artifact:
    recipe, files = hf_tokenizers.tokenizer_recipe(source)
    with artifacts.ArtifactWriter(config.out, "tokenizer", recipe, force=config.force) as writer:
        if writer.up_to_date:
            return writer.existing
        with quiet_transformers(transformers):
            tokenizer_config, stats = hf_tokenizers.write_tokenizer(source, writer.tmp, transformers)
        return writer.commit(tokenizer_config, {"artifacts": [], "files": files}, stats)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a JSON object")
    return value


def _family(hf: dict[str, Any], source: Path) -> tuple[Family, str, str]:
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    family = FAMILY_OF_TYPE.get(model_type)
    supported = ", ".join(supported_architectures())
    named = architectures[0] if architectures else model_type
    if family is None:
        raise UserError(f"{source}/config.json: {named} (model_type {model_type!r}) is not supported; lmkit imports "
                        f"{supported}")
    lm, _classifier, base = family.class_names(model_type)
    architecture = architectures[0] if architectures else lm
    if architecture not in (lm, base):
        raise UserError(f"{source}/config.json: {architecture} is not supported; lmkit imports {supported} "
                        "(finetune a classifier from the language model instead)")
    return family, model_type, architecture


def _weight_files(source: Path, trust_pickle: bool) -> list[Path]:
    if (source / INDEX).is_file():
        index = _read_json(source / INDEX)
        names = sorted(set((index.get("weight_map") or {}).values()))
        missing = [name for name in names if not (source / name).is_file()]
        if not names or missing:
            raise UserError(f"{source / INDEX}: lists weight files that are missing ({', '.join(missing[:3])})")
        return [source / name for name in names]
    if (source / SAFETENSORS).is_file():
        return [source / SAFETENSORS]
    if (source / PICKLE).is_file():
        if not trust_pickle:
            raise UserError(f"{source / PICKLE}: pickled weights are refused (lmkit loads no pickle); convert them to "
                            "safetensors, or pass --trust-pickle to read them with torch.load(weights_only=True)")
        return [source / PICKLE]
    raise UserError(f"{source}: no weights ({SAFETENSORS}, {INDEX} or {PICKLE})")


def _read_tensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        if path.name.endswith(".bin"):
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
                raise UserError(f"{path}: not a loadable weights file ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:200]})") from None
            if not isinstance(loaded, dict) or not all(isinstance(t, torch.Tensor) for t in loaded.values()):
                raise UserError(f"{path}: holds no state dict of tensors")
            tensors.update(loaded)
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    tensors[name] = handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{path}: truncated or not a safetensors file "
                            f"({' '.join(str(exc).split())[:200]})") from None
    # The original BERT (and TensorFlow-converted) files name LayerNorm parameters gamma and beta, as
    # transformers renames on load.
    return {_modern_name(name): tensor for name, tensor in tensors.items()}


def _modern_name(name: str) -> str:
    stem, _, last = name.rpartition(".")
    return f"{stem}.{_LEGACY[last]}" if "LayerNorm" in stem and last in _LEGACY else name


def _with_prefix(tensors: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    """The tensors under a task model's names: a bare body (``GPT2Model``, ``BertModel``) saves them without
    the body's prefix."""
    if any(name.startswith(family.prefix) for name in tensors):
        return tensors
    heads = ("lm_head.", "cls.", "score.", "classifier.")
    return {(name if name.startswith(heads) else family.prefix + name): t for name, t in tensors.items()}


def _load_model(model_config: ModelConfig, family: Family, tensors: dict[str, torch.Tensor], source: Path,
                architecture: str) -> tuple[torch.nn.Module, list[str]]:
    """The lmkit model with the tensors loaded; the names of lmkit tensors the source lacks and that start
    fresh (only a bare BertModel's MLM head). Refuses missing, unexpected or misshapen tensors by name."""
    model = build_model(model_config)
    expected = model.state_dict()
    state, used, missing, fresh = {}, set(), [], []
    bare_encoder = architecture.endswith("Model") and model_config.arch == "bert"
    for entry in family.weights(model_config, classifier=False):
        absent = [name for name in entry.theirs if name not in tensors]
        if absent:
            if bare_encoder and (entry.ours.startswith("mlm_head.") or entry.ours == "lm_head.bias"):
                fresh.append(entry.ours)
                continue
            missing += absent
            continue
        pieces = [tensors[name].t() if entry.transpose else tensors[name] for name in entry.theirs]
        if len({piece.shape[1:] for piece in pieces}) > 1:
            raise UserError(f"{source}: config.json and the weights do not match: "
                            f"{', '.join(f'{n} {tuple(tensors[n].shape)}' for n in entry.theirs)} do not stack")
        state[entry.ours] = torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0]
        used.update(entry.theirs)
    if missing:
        raise UserError(f"{source}: config.json and the weights do not match: the weights lack {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''} ({len(missing)} tensors); truncated or another model")
    extra = sorted(name for name in tensors if name not in used and not _derived(name, tensors, family, used))
    if extra:
        raise UserError(f"{source}: config.json and the weights do not match: the weights hold tensors config.json "
                        f"does not describe ({', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(f"{source}: config.json and the weights do not match: {name} has shape "
                            f"{tuple(tensor.shape)}, config.json implies {tuple(expected[name].shape)}")
    tied = {"lm_head.weight"} if model_config.tie_embeddings else set()
    unset = sorted(set(expected) - set(state) - tied - set(fresh))
    if unset:  # a family table that misses a tensor would leave it random: a bug, said as such
        raise RuntimeError(f"lmkit/interop/families.py maps no source tensor to {unset[:4]}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    if fresh:
        reporter.warn(f"{source}: {architecture} has no masked-LM head; it starts from random weights (finetune for "
                      "classification, or train it with --task mlm, before using fill-mask)")
    return model.eval(), fresh


def _derived(name: str, tensors: dict[str, torch.Tensor], family: Family, used: set[str]) -> bool:
    if name.endswith(_DERIVED) or name.startswith(_UNUSED):
        return True  # rebuilt by lmkit, or a head it has no use for
    if name in _BIAS_TWINS:
        twin = _BIAS_TWINS[name]
        # tied: the copy of the bias that was read; untied: cls.predictions.bias, which transformers ignores
        return twin in used and (torch.equal(tensors[name], tensors[twin]) or name == "cls.predictions.bias")
    if name in ("lm_head.weight", "cls.predictions.decoder.weight") and family.name != "llama":
        embedding = tensors.get(family.prefix + ("wte.weight" if family.name == "gpt2"
                                                 else "embeddings.word_embeddings.weight"))
        return embedding is not None and torch.equal(embedding, tensors[name])  # tied: the same matrix
    if name == "lm_head.weight":  # a tied Llama file may still hold the (equal) output matrix
        embedding = tensors.get(family.prefix + "embed_tokens.weight")
        return embedding is not None and torch.equal(embedding, tensors[name])
    return False


def _check_vocabulary(tokenizer_size: int, model_config: ModelConfig, source: Path) -> None:
    if tokenizer_size > model_config.vocab_size:
        raise UserError(f"{source}: the tokenizer has {tokenizer_size:,} tokens but the model only "
                        f"{model_config.vocab_size:,} embedding rows (config.json vocab_size); they do not belong "
                        "together")
    if tokenizer_size < model_config.vocab_size:
        reporter.info(f"{model_config.vocab_size - tokenizer_size:,} embedding rows beyond the tokenizer's "
                      f"{tokenizer_size:,} tokens (padding rows, never produced)")


@torch.no_grad()
def _check(model: torch.nn.Module, source: Path, architecture: str, model_config: ModelConfig, transformers: Any,
           pad: int) -> float:
    """transformers' logits (or hidden states, for a bare body) on a right-padded batch against lmkit's."""
    generator = torch.Generator().manual_seed(0)
    length = min(model_config.block_size, 24)
    idx = torch.randint(0, model_config.vocab_size, (2, length), generator=generator)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, length // 2:] = False
    idx[1, length // 2:] = pad
    bare = architecture.endswith("Model")
    auto = transformers.AutoModel if bare else (transformers.AutoModelForMaskedLM if model_config.arch == "bert"
                                                else transformers.AutoModelForCausalLM)
    try:
        theirs_model = auto.from_pretrained(str(source), dtype=torch.float32, local_files_only=True).eval()
    except Exception as exc:  # transformers' own loading errors are many
        raise UserError(f"{source}: transformers cannot load it to check the import ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}); pass --no-check to import without the check") from None
    out = theirs_model(input_ids=idx, attention_mask=mask.long())
    if bare:
        theirs = out.last_hidden_state
        ours = model.encode(idx, mask) if model_config.arch == "bert" else model.encode(idx)
    else:
        theirs = out.logits
        ours = model(idx, attention_mask=mask)[0] if model_config.arch == "bert" else model(idx)[0]
    difference = float((ours.float() - theirs.float())[mask].abs().max())
    if difference > TOLERANCE:
        raise UserError(f"{source}: lmkit's model gives outputs up to {difference:.2e} away from transformers' "
                        f"{architecture} (tolerance {TOLERANCE:g}); nothing was written")
    return difference
