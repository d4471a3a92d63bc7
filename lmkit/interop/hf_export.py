"""lmkit checkpoints as Hugging Face transformers models: config, weights, tokenizer and a check.

The weight mapping of each family is in ``families.py`` (one table per family, used by import too):

- lmkit's modern decoder becomes ``LlamaForCausalLM`` (``Qwen3ForCausalLM`` with ``qk_norm``,
  ``Qwen2ForCausalLM`` with ``qkv_bias``), grouped-query attention included;
- the classic GPT-2 (``gpt2-*`` presets, imported GPT-2s) becomes ``GPT2LMHeadModel``;
- the classic BERT (``bert-*`` presets, imported BERTs) becomes ``BertForMaskedLM``;
- a classifier on any of them becomes that family's ``…ForSequenceClassification``.

LoRA adapters kept unmerged are merged first (the outputs are the same). Refused, because transformers
has no equivalent and a near miss would be a wrong model: LSTMs; lmkit's modern encoder (pre-norm
RMSNorm, rotary positions: of the encoders in transformers 5, ModernBERT, EuroBERT, NomicBERT and
UltraBERT each differ in at least one choice); a GELU feed-forward on a Llama-style decoder; classifier
pooling ``mean`` (transformers' sequence classifiers read the last non-padding token, or BERT's pooler).

The tokenizer: lmkit's own SentencePiece model (tokenizer.model, for SentencePiece users) converted by
transformers into tokenizer.json, or an imported tokenizer's tokenizer.json as it came. lmkit adds no
BOS; a classifier's tokenizer adds what ``format_inputs`` adds around the tokens. Special-token strings
in text stay text, as in lmkit (``split_special_tokens``), except with a Unigram vocabulary too small to
spell them (the export warns). The check loads the export with transformers and compares logits and
token ids before commit.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file
from torch import nn

from lmkit.checkpoint import Checkpoint
from lmkit.data.framing import format_inputs
from lmkit.errors import UserError
from lmkit.interop.families import FAMILIES, TYPE_STEMS, Target, family_for_export
from lmkit.progress import reporter
from lmkit.tokenizer import HF_FILE, Tokenizer
from lmkit.tokenizer import MODEL_FILE as SENTENCEPIECE_FILE
from lmkit.tokenizer import load as load_tokenizer
from lmkit.vocab import EOS_ID, FIRST_TEXT_ID, LMKIT, SPECIAL_TOKENS

EXTRA = "pip install 'lmkit[hf]'"
# Largest |lmkit logit - transformers logit| the check accepts (both in float32; they agree to ~1e-6).
TOLERANCE = 1e-4
MIN_TRANSFORMERS = 5  # converts SentencePiece models into tokenizer.json and writes rope_parameters
# Strings whose token ids must be equal in lmkit and transformers: spaces (SentencePiece's dummy prefix,
# runs of spaces), digits, bytes outside the vocabulary, newlines, SentencePiece's space marker.
PROBE_TEXTS = ("Hello world", " leading space", "trailing space ", "two  spaces\tand a tab", "digits 12345 and 3.14",
               "line one\nline two\n\n", "ünïcödé ✓ 漢字 🙂", "▁marker", "")
# Special tokens written as text. A Unigram tokenizer whose vocabulary lacks one of their characters
# (tiny vocabularies only) still reads them as one token in transformers: a warning, not a refusal.
SPECIAL_TEXT = " ".join(piece for piece, _id in SPECIAL_TOKENS.values())


def import_transformers(command: str = "lmkit export --format hf") -> Any:
    """transformers, imported on first use: an optional extra, named when it is missing."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{command} needs transformers: {EXTRA}") from None
    major = int(transformers.__version__.split(".")[0])
    if major < MIN_TRANSFORMERS:
        raise UserError(f"{command} needs transformers >= {MIN_TRANSFORMERS} "
                        f"(found {transformers.__version__}): pip install -U 'lmkit[hf]'")
    return transformers


def refusals(checkpoint: Checkpoint) -> list[str]:
    """Why ``checkpoint`` cannot be exported exactly, one line per reason naming the lmkit choice."""
    config, where = checkpoint.model_config, checkpoint.path
    if checkpoint.qa is not None:  # before the body's reasons: what it is comes first
        return [f"{where}: a question-answering (span) model; lmkit exports language models and classifiers, "
                "not BertForQuestionAnswering"]
    family, problems = family_for_export(config)
    lines = [f"{where}: {problem} has no exact transformers equivalent" for problem in problems]
    for name, value in (("--share-layers", config.share_layers), ("--embedding-dim", config.embedding_dim)):
        if value:  # ALBERT's ideas, but lmkit's blocks and heads are not transformers' Albert* layers
            lines.append(f"{where}: {name} {value} (ALBERT-style sharing) has no exact transformers equivalent in the "
                         "Llama, GPT-2 or BERT classes, which hold every layer's own weights; it stays an lmkit model")
    if checkpoint.head is not None:
        wanted = "cls" if config.arch == "bert" else "last"
        if checkpoint.head["pooling"] != wanted:
            reader = "BERT's pooler reads [CLS]" if wanted == "cls" else "their classifiers read the last token"
            lines.append(f"{where}: classifier pooling {checkpoint.head['pooling']!r} has no transformers "
                         f"equivalent ({reader}); finetune with --pooling {wanted} to export")
        elif wanted == "cls" and not config.pooler:
            lines.append(f"{where}: a BERT classifier without BERT's pooler has no BertForSequenceClassification "
                         "equivalent")
    return lines


def target_for(checkpoint: Checkpoint) -> Target:
    family, _problems = family_for_export(checkpoint.model_config)
    model_type = family.model_type_for(checkpoint.model_config)
    if model_type == "llama" and checkpoint.artifact.stats.get("model_type") == "mistral":
        model_type = "mistral"  # an imported Mistral (no window shorter than the model) goes back as one
    lm, classifier_class, _base = family.class_names(model_type)
    classifier = checkpoint.head is not None
    return Target(family.name, model_type, classifier_class if classifier else lm, classifier)


def hf_config(checkpoint: Checkpoint, target: Target, transformers: Any) -> Any:
    """The transformers config of ``target`` for the checkpoint's model."""
    config, specials = checkpoint.model_config, checkpoint.specials
    values = FAMILIES[target.family].to_hf(config, target.model_type)
    values.update(bos_token_id=_bos(specials), eos_token_id=specials.eos, pad_token_id=specials.pad,
                  architectures=[target.architecture], dtype="float32")
    if target.classifier:
        labels = checkpoint.labels
        values.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: index for index, label in enumerate(labels)})
        if target.family == "llama":
            values["tie_word_embeddings"] = False  # a classifier has no output projection to tie
    config_class = getattr(transformers, TYPE_STEMS[target.model_type] + "Config")
    return config_class(**values)


def _bos(specials) -> int | None:
    return specials.bos if specials.bos is not None else specials.start


def hf_state_dict(model: nn.Module, checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names (see families.py); contiguous copies."""
    target = target_for(checkpoint)
    config = checkpoint.model_config
    if config.sentence_head and not target.classifier:
        # the pretraining-only pooler and sentence head (mlm+nsp, mlm+sop): BertForMaskedLM has neither, as
        # transformers drops both when it loads a BertForPreTraining checkpoint into one
        config = dataclasses.replace(config, pooler=False, sentence_head=False)
    entries = FAMILIES[target.family].weights(config, target.classifier)
    return split_weights(model.state_dict(), entries, config)


def split_weights(state: dict[str, torch.Tensor], entries, config) -> dict[str, torch.Tensor]:
    """lmkit tensors cut into their transformers tensors (stacked q, k, v split; Conv1D transposed)."""
    weights = {}
    q_size, kv_size = config.n_head * config.head_dim, config.kv_heads * config.head_dim
    for entry in entries:
        tensor = state[entry.ours]
        pieces = tensor.split([q_size, kv_size, kv_size], dim=0) if len(entry.theirs) == 3 else (tensor,)
        for name, piece in zip(entry.theirs, pieces):
            weights[name] = (piece.t() if entry.transpose else piece).detach().contiguous().clone()
    return weights


def write_model(directory: Path, checkpoint: Checkpoint, model: nn.Module, target: Target,
                transformers: Any) -> int:
    """config.json, model.safetensors and generation_config.json; returns the number of parameters."""
    config = hf_config(checkpoint, target, transformers)
    config.save_pretrained(directory)
    # transformers 4 reads rope_theta at the top level (5 reads rope_parameters): without it a 4.x reader
    # would silently use its default base.
    path = directory / "config.json"
    saved = json.loads(path.read_text())
    if target.family == "llama":
        saved.setdefault("rope_theta", checkpoint.model_config.rope_theta)
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    weights = hf_state_dict(model, checkpoint)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if not target.classifier and target.family != "bert":
        specials, stop = checkpoint.specials, list(checkpoint.stop_ids)
        # Every id that ends a reply: a chat model's end of turn too, so that generate stops where lmkit does.
        generation = transformers.GenerationConfig(bos_token_id=_bos(specials),
                                                   eos_token_id=stop if len(stop) > 1 else specials.eos,
                                                   pad_token_id=specials.pad)
        generation.save_pretrained(directory)
    return sum(tensor.numel() for tensor in weights.values())


def write_tokenizer(directory: Path, checkpoint: Checkpoint, target: Target, transformers: Any) -> None:
    """tokenizer.model (lmkit's SentencePiece model), tokenizer.json and tokenizer_config.json."""
    if (checkpoint.tokenizer_path / HF_FILE).exists():
        _write_imported_tokenizer(directory, checkpoint, target)
        return
    shutil.copy2(checkpoint.tokenizer_path / SENTENCEPIECE_FILE, directory / SENTENCEPIECE_FILE)
    settings = {
        # PreTrainedTokenizerFast (TokenizersBackend in transformers 5) reads tokenizer.json, or converts
        # tokenizer.model when there is none, which is how tokenizer.json is made below.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{name}_token": piece for name, (piece, _id) in SPECIAL_TOKENS.items()},
        "add_bos_token": False,
        "add_eos_token": target.classifier and checkpoint.model_config.arch != "bert" and classifier_appends_eos(),
        "split_special_tokens": True,  # "<s>" in text is text, as in lmkit
        "clean_up_tokenization_spaces": False,
        "model_max_length": checkpoint.model_config.block_size,
        # Generation pads on the left (positions follow the attention mask); a classifier on the right,
        # as lmkit trains it (transformers' classifiers read the last non-padding token).
        "padding_side": "right" if target.classifier else "left",
        **chat_settings(checkpoint),
    }
    config_path = directory / "tokenizer_config.json"
    config_path.write_text(json.dumps(settings, indent=2) + "\n")
    converted = transformers.AutoTokenizer.from_pretrained(str(directory))
    backend = converted.backend_tokenizer
    if checkpoint.model_config.arch == "bert":  # an encoder reads [CLS] text [SEP], as transformers' BERTs add them
        from tokenizers.processors import TemplateProcessing

        cls, sep = SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"]
        backend.post_processor = TemplateProcessing(single=f"{cls[0]} $A {sep[0]}",
                                                    pair=f"{cls[0]} $A {sep[0]} $B:1 {sep[0]}:1",
                                                    special_tokens=[cls, sep])
    ours = load_tokenizer(checkpoint.tokenizer_path)
    if ours.added:  # lmkit's chat tokens, after the SentencePiece vocabulary: special added tokens, same ids
        from tokenizers import AddedToken

        backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in ours.added])
        ids = [backend.token_to_id(token) for token in ours.added]
        if ids != list(range(ours.pieces, ours.vocab_size)):
            raise RuntimeError(f"the exported tokenizer gave the added tokens ids {ids}")  # a bug
    backend.save(str(directory / "tokenizer.json"))
    _keep_special_pieces_out_of_unigram(directory / "tokenizer.json")
    config_path.write_text(json.dumps(settings, indent=2) + "\n")  # transformers' own save would add more


def _write_imported_tokenizer(directory: Path, checkpoint: Checkpoint, target: Target) -> None:
    """An imported tokenizer's tokenizer.json, framing inputs as lmkit does: a causal model's text alone
    (its own post-processor, e.g. Llama's <s>, is dropped: lmkit adds the start token itself), an
    encoder's [CLS] text [SEP] (BERT's own template)."""
    saved = json.loads((checkpoint.tokenizer_path / HF_FILE).read_text(encoding="utf-8"))
    if checkpoint.model_config.arch != "bert":
        saved["post_processor"] = None
    (directory / HF_FILE).write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")
    specials, tokenizer = checkpoint.specials, load_tokenizer(checkpoint.tokenizer_path)
    settings: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "split_special_tokens": True,
                                "clean_up_tokenization_spaces": False,
                                "model_max_length": checkpoint.model_config.block_size,
                                "padding_side": "right" if target.classifier else "left"}
    for name in ("pad", "eos", "bos", "unk", "mask", "cls", "sep"):
        token_id = getattr(specials, name)
        if token_id is not None:
            settings[f"{name}_token"] = tokenizer.id_to_piece(token_id)
    settings.update(chat_settings(checkpoint))
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def chat_settings(checkpoint: Checkpoint) -> dict[str, Any]:
    """A chat model's tokenizer_config.json entries: its template, the special-token strings it reads, and
    transformers' default reading of special tokens in text (``split_special_tokens`` false), which is how
    apply_chat_template reads the rendering, so that its ids are lmkit's."""
    if checkpoint.chat is None:
        return {}
    return {**checkpoint.chat.variables, "chat_template": exported_template(checkpoint.chat),
            "split_special_tokens": False}


def exported_template(chat) -> str:
    """The chat template as transformers will read it: with the default system prompt (finetune --system-prompt)
    opening a conversation that has none, as lmkit does, so that apply_chat_template gives lmkit's ids."""
    if not chat.system:
        return chat.template
    system = json.dumps(chat.system, ensure_ascii=False)  # a JSON string is a Jinja string literal
    return ("{%- if not messages or messages[0]['role'] != 'system' -%}{%- set messages = [{'role': 'system', "
            f"'content': {system}}}] + messages -%}}{{%- endif -%}}" + chat.template)


def classifier_appends_eos() -> bool:
    """Whether lmkit's causal classifiers read ``tokens </s>`` (the layout of ``format_inputs``), so that
    the exported tokenizer gives transformers the same ids; asked of format_inputs itself."""
    row = format_inputs([[FIRST_TEXT_ID, FIRST_TEXT_ID + 1]], "gpt", 8, LMKIT)[0][0].tolist()
    return row[-1] == EOS_ID


def _keep_special_pieces_out_of_unigram(path: Path) -> None:
    """SentencePiece never matches control pieces (<s>, [MASK] ...) in text, but the converted Unigram
    model keeps them with score 0, the best there is, so "[MASK]" written in text would become one
    token: give them a score no segmentation chooses. (BPE merges never build them.)"""
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved["model"]["type"] != "Unigram":
        return
    for _name, (piece, token_id) in SPECIAL_TOKENS.items():
        entry = saved["model"]["vocab"][token_id]
        if entry[0] == piece:
            entry[1] = -1e9
    path.write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")


# -- the check ----------------------------------------------------------------------------------------

def check_export(directory: Path, checkpoint: Checkpoint, model: nn.Module, target: Target,
                 transformers: Any) -> float:
    """Load the export with transformers and compare it with lmkit: logits on probe batches (within
    TOLERANCE) and token ids of PROBE_TEXTS. Returns the largest logit difference; raises UserError
    naming the first mismatch."""
    auto = (transformers.AutoModelForSequenceClassification if target.classifier
            else transformers.AutoModelForMaskedLM if target.family == "bert" else transformers.AutoModelForCausalLM)
    loaded, info = auto.from_pretrained(str(directory), dtype=torch.float32, output_loading_info=True)
    unexpected = {key: sorted(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(unexpected.values()):
        raise UserError(f"{checkpoint.path}: transformers does not load the exported weights as written "
                        f"({', '.join(f'{k} {v[:3]}' for k, v in unexpected.items() if v)}); nothing was written")
    loaded.eval()
    difference = 0.0
    with torch.no_grad():
        for idx, mask in probe_batches(checkpoint):
            if target.classifier:
                ours = model(idx, attention_mask=mask)[0]  # (B, K)
                theirs = loaded(input_ids=idx, attention_mask=mask.long()).logits  # (B, K)
            else:
                ours = model(idx)[0]  # (B, T, V)
                theirs = loaded(input_ids=idx).logits  # (B, T, V)
            difference = max(difference, (ours.float() - theirs.float()).abs().max().item())
    if difference > TOLERANCE:
        raise UserError(f"{checkpoint.path}: transformers' {target.architecture} gives logits up to {difference:.2e} "
                        f"away from lmkit's (tolerance {TOLERANCE:g}); refusing to write a different model")
    if not target.classifier and target.family != "bert":
        _check_greedy(checkpoint, model, loaded, target)
    _check_tokenizer(directory, checkpoint, target, transformers)
    if checkpoint.chat is not None:
        _check_chat(directory, checkpoint, transformers)
    return difference


def _check_chat(directory: Path, checkpoint: Checkpoint, transformers: Any) -> None:
    """apply_chat_template on the export must give lmkit's ids for probe conversations (a system prompt, several
    turns), with the generation prompt and without it."""
    from lmkit.data.chat_template import render

    ours = load_tokenizer(checkpoint.tokenizer_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    chat = checkpoint.chat
    probes = ([{"role": "user", "content": "Hello there!"}],
              [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "What is 2 + 2?"},
               {"role": "assistant", "content": "4, of course."}, {"role": "user", "content": "And 3 + 3?"}])
    for probe in probes:
        for prompt in (True, False):
            want = ours.encode_chat(render(chat, chat.with_system(probe), prompt, "the probe conversation"))
            got = list(theirs.apply_chat_template(probe, add_generation_prompt=prompt, tokenize=True,
                                                  return_dict=False))
            if got != want:
                raise UserError(f"{checkpoint.path}: transformers' apply_chat_template on the export gives "
                                f"{got[:12]} for a probe conversation, lmkit {want[:12]}; refusing to write a "
                                "different chat format")


GREEDY_STEPS = 8


@torch.no_grad()
def _check_greedy(checkpoint: Checkpoint, model: nn.Module, loaded: nn.Module, target: Target) -> None:
    """Greedy continuations of a probe prompt: transformers' ``generate`` (its KV cache) against lmkit's
    decoding loop (its own KV cache), which must pick the same ids."""
    from lmkit.generation.decode import decode
    from lmkit.generation.settings import SamplingSettings

    config, specials = checkpoint.model_config, checkpoint.specials
    prompt = probe_batches(checkpoint)[-1][0][0, :max(1, min(8, config.block_size - GREEDY_STEPS - 1))].tolist()
    settings = SamplingSettings(temperature=0.0, max_new_tokens=GREEDY_STEPS)
    ours = decode(model, [prompt], settings, [torch.Generator().manual_seed(0)], eos_id=None, banned=())[0].ids
    theirs = loaded.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=GREEDY_STEPS, min_new_tokens=GREEDY_STEPS,
                             pad_token_id=specials.pad, eos_token_id=None)[0, len(prompt):].tolist()
    if ours != theirs:
        raise UserError(f"{checkpoint.path}: greedy decoding in transformers' {target.architecture} picks {theirs} "
                        f"after the probe prompt, lmkit {ours}; refusing to write a different model")


def probe_batches(checkpoint: Checkpoint) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic inputs for the check: random ids (no special tokens) of two lengths, right-padded
    classifier batches built as lmkit builds them."""
    config = checkpoint.model_config
    generator = torch.Generator().manual_seed(0)
    length = min(config.block_size, 48)
    rows = [torch.randint(FIRST_TEXT_ID, config.vocab_size, (n,), generator=generator).tolist()
            for n in (length, max(1, length // 3))]
    if checkpoint.head is not None:
        return [format_inputs(rows, config.arch, config.block_size, checkpoint.specials)]
    return [(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool)) for row in rows]


def _check_tokenizer(directory: Path, checkpoint: Checkpoint, target: Target, transformers: Any) -> None:
    ours = load_tokenizer(checkpoint.tokenizer_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    config = checkpoint.model_config

    def expected(text: str) -> list[int]:
        if not target.classifier:
            return ours.encode(text)
        idx, mask = format_inputs([ours.encode(text)], config.arch, config.block_size, checkpoint.specials)
        return idx[0][mask[0]].tolist()

    for text in PROBE_TEXTS:
        if target.classifier and not text and config.arch != "bert":
            continue  # format_inputs gives an empty text a token of its own; a tokenizer cannot
        # A language model's ids are the text's alone; a classifier's as the tokenizer frames them.
        want, got = expected(text), theirs(text, add_special_tokens=target.classifier)["input_ids"]
        if got != want:
            raise UserError(f"{checkpoint.path}: the converted tokenizer splits {text!r} differently from lmkit's "
                            f"({got[:12]} vs {want[:12]}); refusing to write a different tokenizer")
    if not isinstance(ours, Tokenizer) or checkpoint.chat is not None:
        # the check below is about lmkit's SentencePiece conversion; a chat export reads special tokens in text
        # (split_special_tokens false, as apply_chat_template needs), so they differ there by design
        return
    if theirs(SPECIAL_TEXT, add_special_tokens=target.classifier)["input_ids"] != expected(SPECIAL_TEXT):
        reporter.warn(f"{checkpoint.path}: in transformers, special tokens written as text ({SPECIAL_TEXT}) "
                      "may tokenize differently from lmkit (a Unigram vocabulary lacking some of their characters)")


@contextmanager
def quiet_transformers(transformers) -> Iterator[None]:
    """transformers' loading bars and advice would drown lmkit's own lines; its settings are restored after."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
