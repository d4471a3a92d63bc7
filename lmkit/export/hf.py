"""lmkit checkpoints as Hugging Face transformers models: the weight mapping, config, tokenizer and a check.

lmkit's GPT is a Llama-style decoder, so a GPT checkpoint becomes ``LlamaForCausalLM`` and a GPT
classifier ``LlamaForSequenceClassification``. With ``qk_norm`` the target is Qwen3 instead
(``Qwen3ForCausalLM`` / ``Qwen3ForSequenceClassification``): Qwen3 is Llama plus a per-head RMSNorm of
q and k before RoPE, which is exactly lmkit's qk_norm. No tensor is permuted: lmkit's RoPE pairs
(x[i], x[i + hd/2]) ("rotate half"), as transformers' Llama does. ``C`` is d_model; ``{i}`` a block;
a classifier's lmkit names start with ``backbone.`` (its head is ``head.weight``).

| lmkit                              | transformers                                     | note                   |
| ---------------------------------- | ------------------------------------------------ | ---------------------- |
| tok_emb.weight                     | model.embed_tokens.weight                        |                        |
| blocks.{i}.attn_norm.weight        | model.layers.{i}.input_layernorm.weight          | RMSNorm, same formula  |
| blocks.{i}.attn.qkv.weight [0:C]   | model.layers.{i}.self_attn.q_proj.weight         | fused (3C, C): q, k, v |
| blocks.{i}.attn.qkv.weight [C:2C]  | model.layers.{i}.self_attn.k_proj.weight         | no grouped keys        |
| blocks.{i}.attn.qkv.weight [2C:3C] | model.layers.{i}.self_attn.v_proj.weight         |                        |
| blocks.{i}.attn.q_norm.weight      | model.layers.{i}.self_attn.q_norm.weight         | qk_norm: Qwen3         |
| blocks.{i}.attn.k_norm.weight      | model.layers.{i}.self_attn.k_norm.weight         | qk_norm: Qwen3         |
| blocks.{i}.attn.out_proj.weight    | model.layers.{i}.self_attn.o_proj.weight         |                        |
| blocks.{i}.mlp_norm.weight         | model.layers.{i}.post_attention_layernorm.weight |                        |
| blocks.{i}.mlp.gate.weight         | model.layers.{i}.mlp.gate_proj.weight            | SwiGLU: silu           |
| blocks.{i}.mlp.up.weight           | model.layers.{i}.mlp.up_proj.weight              |                        |
| blocks.{i}.mlp.down.weight         | model.layers.{i}.mlp.down_proj.weight            |                        |
| final_norm.weight                  | model.norm.weight                                |                        |
| lm_head.weight                     | lm_head.weight                                   | untied only            |
| head.weight                        | score.weight                                     | classifiers, no bias   |

Config: hidden_size=d_model, intermediate_size=ffn_dim, num_hidden_layers=n_layer, num_attention_heads
= num_key_value_heads = n_head, head_dim=d_model/n_head, rms_norm_eps=norm_eps, rope_theta,
max_position_embeddings=block_size, tie_word_embeddings, vocab_size, no biases, bos/eos/pad 2/3/0.
LoRA adapters kept unmerged are merged first (the outputs are the same).

Refused, because transformers has no equivalent and a near miss would be a wrong model:
``--mlp gelu`` (Llama's feed-forward is gated), classifier pooling ``mean`` (transformers' sequence
classifiers read the last non-padding token), LSTMs, and lmkit's BERT. That BERT is pre-norm with
RMSNorm and rotary positions, and its MLM head normalizes with RMSNorm; ``BertForMaskedLM`` is post-norm
LayerNorm with learned absolute positions. Of the encoders in transformers 5, ModernBERT (LayerNorm, a
LayerNorm after the embeddings, gated GELU), EuroBERT (RMSNorm and rotate-half RoPE, but a gated MLP
and no dense-GELU-norm transform before the decoder), NomicBERT (post-norm LayerNorm) and UltraBERT
(gated MLP, another head) each differ in at least one of these choices.

The tokenizer is lmkit's SentencePiece model (tokenizer.model, for SentencePiece users) converted by
transformers into tokenizer.json. lmkit adds no BOS; a classifier's tokenizer adds what
``format_inputs`` adds around the tokens of a causal model, if anything. Special-token strings in text stay text, as
in lmkit (``split_special_tokens``), except with a Unigram vocabulary too small to spell them (the export
warns). The check loads the export with transformers and compares logits and token ids before commit.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmkit.errors import UserError
from lmkit.models.classifier import format_inputs
from lmkit.progress import reporter
from lmkit.tokenizer import MODEL_FILE as SENTENCEPIECE_FILE
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import BOS_ID, EOS_ID, FIRST_TEXT_ID, PAD_ID, SPECIAL_TOKENS
from lmkit.training.checkpoint import Checkpoint

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


@dataclass(frozen=True)
class Target:
    """The transformers class a checkpoint becomes."""

    model_type: str    # "llama" or "qwen3"
    architecture: str  # e.g. "LlamaForCausalLM"
    classifier: bool


def import_transformers() -> Any:
    """transformers, imported on first use: an optional extra, named when it is missing."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"lmkit export --format hf needs transformers: {EXTRA}") from None
    major = int(transformers.__version__.split(".")[0])
    if major < MIN_TRANSFORMERS:
        raise UserError(f"lmkit export --format hf needs transformers >= {MIN_TRANSFORMERS} "
                        f"(found {transformers.__version__}): pip install -U 'lmkit[hf]'")
    return transformers


def refusals(checkpoint: Checkpoint) -> list[str]:
    """Why ``checkpoint`` cannot be exported exactly, one line per reason naming the lmkit choice."""
    config, where = checkpoint.model_config, checkpoint.path
    if config.arch == "lstm":
        return [f"{where}: an LSTM (arch lstm) has no transformers equivalent; only gpt checkpoints export"]
    if config.arch == "bert":
        return [f"{where}: lmkit's BERT (pre-norm RMSNorm, rotary positions, RMSNorm in the MLM head) has no "
                "transformers equivalent: BertForMaskedLM is post-norm LayerNorm with learned absolute positions, "
                "and no other encoder matches (see lmkit/export/hf.py); only gpt checkpoints export"]
    problems = []
    if config.mlp == "gelu":
        problems.append(f"{where}: --mlp gelu (a non-gated GELU feed-forward, as in the gpt2-124m preset) has no "
                        "Llama equivalent (Llama's feed-forward is gated SwiGLU); train with --mlp swiglu to export")
    if checkpoint.head is not None and checkpoint.head["pooling"] != "last":
        problems.append(f"{where}: classifier pooling {checkpoint.head['pooling']!r} has no transformers "
                        "equivalent (LlamaForSequenceClassification reads the last token); finetune with "
                        "--pooling last to export")
    return problems


def target_for(checkpoint: Checkpoint) -> Target:
    model_type, prefix = ("qwen3", "Qwen3") if checkpoint.model_config.qk_norm else ("llama", "Llama")
    classifier = checkpoint.head is not None
    return Target(model_type, prefix + ("ForSequenceClassification" if classifier else "ForCausalLM"), classifier)


def hf_config(checkpoint: Checkpoint, target: Target, transformers: Any) -> Any:
    """The transformers config of ``target`` for the checkpoint's model."""
    config = checkpoint.model_config
    values: dict[str, Any] = dict(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, num_key_value_heads=config.n_head,
        head_dim=config.head_dim, hidden_act="silu", max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta, attention_bias=False, attention_dropout=0.0,
        # A classifier has no output projection to tie.
        tie_word_embeddings=config.tie_embeddings and not target.classifier,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, architectures=[target.architecture],
        dtype="float32")
    if target.model_type == "llama":
        values["mlp_bias"] = False
    if target.classifier:
        labels = checkpoint.labels
        values.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: index for index, label in enumerate(labels)})
    config_class = transformers.Qwen3Config if target.model_type == "qwen3" else transformers.LlamaConfig
    return config_class(**values)


def hf_state_dict(model: nn.Module, checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names (see the table above); contiguous copies."""
    config = checkpoint.model_config
    prefix = "backbone." if checkpoint.head is not None else ""
    lmkit = {name[len(prefix):]: tensor for name, tensor in model.state_dict().items() if name.startswith(prefix)}
    weights = {"model.embed_tokens.weight": lmkit["tok_emb.weight"], "model.norm.weight": lmkit["final_norm.weight"]}
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = lmkit[ours + "attn.qkv.weight"].split(config.d_model, dim=0)  # (C, C) each
        weights.update({
            theirs + "input_layernorm.weight": lmkit[ours + "attn_norm.weight"],
            theirs + "self_attn.q_proj.weight": q,
            theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v,
            theirs + "self_attn.o_proj.weight": lmkit[ours + "attn.out_proj.weight"],
            theirs + "post_attention_layernorm.weight": lmkit[ours + "mlp_norm.weight"],
            theirs + "mlp.gate_proj.weight": lmkit[ours + "mlp.gate.weight"],
            theirs + "mlp.up_proj.weight": lmkit[ours + "mlp.up.weight"],
            theirs + "mlp.down_proj.weight": lmkit[ours + "mlp.down.weight"],
        })
        if config.qk_norm:
            weights[theirs + "self_attn.q_norm.weight"] = lmkit[ours + "attn.q_norm.weight"]
            weights[theirs + "self_attn.k_norm.weight"] = lmkit[ours + "attn.k_norm.weight"]
    if checkpoint.head is not None:
        weights["score.weight"] = model.state_dict()["head.weight"]
    elif not config.tie_embeddings:
        weights["lm_head.weight"] = lmkit["lm_head.weight"]
    return {name: tensor.detach().contiguous().clone() for name, tensor in weights.items()}


def write_model(directory: Path, checkpoint: Checkpoint, model: nn.Module, target: Target,
                transformers: Any) -> int:
    """config.json, model.safetensors and generation_config.json; returns the number of parameters."""
    config = hf_config(checkpoint, target, transformers)
    config.save_pretrained(directory)
    # transformers 4 reads rope_theta at the top level (5 reads rope_parameters): without it a 4.x reader
    # would silently use its default base.
    path = directory / "config.json"
    saved = json.loads(path.read_text())
    saved.setdefault("rope_theta", checkpoint.model_config.rope_theta)
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    weights = hf_state_dict(model, checkpoint)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if not target.classifier:
        generation = transformers.GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        generation.save_pretrained(directory)
    return sum(tensor.numel() for tensor in weights.values())


def write_tokenizer(directory: Path, checkpoint: Checkpoint, target: Target, transformers: Any) -> None:
    """tokenizer.model (lmkit's SentencePiece model), tokenizer.json and tokenizer_config.json."""
    shutil.copy2(checkpoint.tokenizer_path / SENTENCEPIECE_FILE, directory / SENTENCEPIECE_FILE)
    settings = {
        # PreTrainedTokenizerFast (TokenizersBackend in transformers 5) reads tokenizer.json, or converts
        # tokenizer.model when there is none, which is how tokenizer.json is made below.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{name}_token": piece for name, (piece, _id) in SPECIAL_TOKENS.items()},
        "add_bos_token": False,
        "add_eos_token": target.classifier and classifier_appends_eos(),
        "split_special_tokens": True,  # "<s>" in text is text, as in lmkit
        "clean_up_tokenization_spaces": False,
        "model_max_length": checkpoint.model_config.block_size,
        # Generation pads on the left (positions follow the attention mask); a classifier on the right,
        # as lmkit trains it (transformers' classifiers read the last non-padding token).
        "padding_side": "right" if target.classifier else "left",
    }
    config_path = directory / "tokenizer_config.json"
    config_path.write_text(json.dumps(settings, indent=2) + "\n")
    converted = transformers.AutoTokenizer.from_pretrained(str(directory))
    converted.backend_tokenizer.save(str(directory / "tokenizer.json"))
    _keep_special_pieces_out_of_unigram(directory / "tokenizer.json")
    config_path.write_text(json.dumps(settings, indent=2) + "\n")  # transformers' own save would add more


def classifier_appends_eos() -> bool:
    """Whether lmkit's causal classifiers read ``tokens </s>`` (the layout of ``format_inputs``), so that
    the exported tokenizer gives transformers the same ids; asked of format_inputs itself."""
    row = format_inputs([[FIRST_TEXT_ID, FIRST_TEXT_ID + 1]], "gpt", 8)[0][0].tolist()
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
            else transformers.AutoModelForCausalLM)
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
    _check_tokenizer(directory, checkpoint, target, transformers)
    return difference


def probe_batches(checkpoint: Checkpoint) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic inputs for the check: random ids (no special tokens) of two lengths, right-padded
    classifier batches built as lmkit builds them."""
    config = checkpoint.model_config
    generator = torch.Generator().manual_seed(0)
    length = min(config.block_size, 48)
    rows = [torch.randint(FIRST_TEXT_ID, config.vocab_size, (n,), generator=generator).tolist()
            for n in (length, max(1, length // 3))]
    if checkpoint.head is not None:
        return [format_inputs(rows, config.arch, config.block_size)]
    return [(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool)) for row in rows]


def _check_tokenizer(directory: Path, checkpoint: Checkpoint, target: Target, transformers: Any) -> None:
    ours = Tokenizer(checkpoint.tokenizer_path / SENTENCEPIECE_FILE)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    def expected(text: str) -> list[int]:
        if not target.classifier:
            return ours.encode(text)
        idx, mask = format_inputs([ours.encode(text)], "gpt", checkpoint.model_config.block_size)
        return idx[0][mask[0]].tolist()

    for text in PROBE_TEXTS:
        if target.classifier and not text:
            continue  # format_inputs gives an empty text a token of its own; a tokenizer cannot
        want, got = expected(text), theirs(text)["input_ids"]
        if got != want:
            raise UserError(f"{checkpoint.path}: the converted tokenizer splits {text!r} differently from lmkit's "
                            f"({got[:12]} vs {want[:12]}); refusing to write a different tokenizer")
    if theirs(SPECIAL_TEXT)["input_ids"] != expected(SPECIAL_TEXT):
        reporter.warn(f"{checkpoint.path}: in transformers, special tokens written as text ({SPECIAL_TEXT}) "
                      "may tokenize differently from lmkit (a Unigram vocabulary lacking some of their characters)")
