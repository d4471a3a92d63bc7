"""lmkit checkpoints as GGUF files for llama.cpp: hyperparameters, weights, tokenizer and chat template in one file.

The decoders llama.cpp runs that lmkit has, in llama.cpp's architectures:

- lmkit's modern decoder (pre-norm RMSNorm, RoPE, SwiGLU; imported Llama and Mistral) as ``llama``; with
  ``--qkv-bias`` as ``qwen2``, with ``--qk-norm`` as ``qwen3`` (imported Qwen2 and Qwen3);
- the classic GPT-2 (``gpt2-*`` presets, imported GPT-2s) as ``gpt2``.

The tensors are those of the Hugging Face export (``families.py``'s tables, one per family), named as llama.cpp
names them (the ``gguf`` package's tensor map, the one llama.cpp's own converter uses), in transformers' layout
except in two places, as llama.cpp's ``convert_hf_to_gguf.py`` writes them: GPT-2's weights untransposed (no
Conv1D), and the ``llama`` architecture's query and key rows permuted. lmkit rotates pairs (x[i], x[i + d/2])
("rotate half", GPT-NeoX's and transformers' RoPE), which llama.cpp's ``qwen2`` and ``qwen3`` do too; its
``llama`` rotates adjacent pairs (x[2i], x[2i + 1]), the layout of Meta's original checkpoints, so each head's rows
are interleaved (``permute``). Llama 3.1's RoPE scaling travels as the ``rope_freqs`` tensor, linear scaling as
``rope.scaling.*``. 2-D weights take the chosen type (f32, f16, bf16 or Q8_0); norms, biases, position tables and
rope_freqs stay f32, and a weight whose rows Q8_0's blocks of 32 do not divide falls back to f16, as llama.cpp's
converter does. The vocabulary is ``gguf_vocab.py``'s.

Refused, because llama.cpp has no exact equivalent: encoders (BERT), LSTMs, classifier and span heads, what the
Hugging Face export refuses for the same family (``families.py``), GPT-2 with the exact GELU (llama.cpp's gpt2 uses
the tanh approximation), ALBERT-style sharing, and Llama 3.1 RoPE scaling outside the ``llama`` architecture.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmkit import __version__
from lmkit.checkpoint import Checkpoint
from lmkit.errors import UserError
from lmkit.interop.families import FAMILIES, family_for_export
from lmkit.interop.gguf_vocab import Vocab
from lmkit.interop.hf_export import exported_template, probe_batches, split_weights

EXTRA = "pip install 'lmkit[gguf]'"
MIN_GGUF = (0, 17)  # GGUFReader's field.contents() and gguf.quants' Q8_0 and BF16
MODEL_FILE = "model.gguf"
# transformers' {% generation %} tags mark assistant spans for training; they render nothing and llama.cpp's Jinja
# engine need not know them.
_GENERATION_TAGS = re.compile(r"\{%\s*(?:end)?generation\s*%\}")
SUPPORTED = ("lmkit's Llama-style GPT and GPT-2, and imported Llama, Mistral, Qwen2, Qwen3 and GPT-2 models, as "
             "llama.cpp's llama, qwen2, qwen3 and gpt2")


def import_gguf(command: str = "lmkit export --format gguf") -> Any:
    """The gguf package, imported on first use: an optional extra, named when it is missing."""
    try:
        import gguf
    except ImportError:
        raise UserError(f"{command} needs the gguf package: {EXTRA}") from None
    from importlib.metadata import version

    found = version("gguf")
    if tuple(int(part) for part in found.split(".")[:2]) < MIN_GGUF:
        raise UserError(f"{command} needs gguf >= {'.'.join(map(str, MIN_GGUF))} (found {found}): "
                        "pip install -U 'lmkit[gguf]'")
    return gguf


@dataclass(frozen=True)
class Target:
    """The llama.cpp architecture a checkpoint becomes."""

    arch: str         # llama.cpp's name: llama, qwen2, qwen3, gpt2
    family: str       # a key of families.FAMILIES: whose tensor table it uses
    permute_qk: bool  # llama.cpp's llama rotates adjacent pairs: interleave each head's query and key rows


def refusals(checkpoint: Checkpoint) -> list[str]:
    """Why ``checkpoint`` cannot become a GGUF file llama.cpp runs as lmkit does, one line per reason."""
    config, where = checkpoint.model_config, checkpoint.path
    if checkpoint.task in ("classify", "qa") or config.arch != "gpt":
        what = {"classify": "a classifier", "qa": "a question-answering (span) model"}.get(
            checkpoint.task, f"an {config.arch.upper()} model (arch {config.arch})")
        return [f"{where}: {what}; --format gguf writes decoder language models: {SUPPORTED}"]
    family, problems = family_for_export(config)
    lines = [f"{where}: {problem} has no llama.cpp equivalent" for problem in problems]
    if config.share_layers or config.embedding_dim:
        lines.append(f"{where}: --share-layers or --embedding-dim (ALBERT-style sharing) has no llama.cpp equivalent")
    if family is not None and family.name == "gpt2" and config.mlp == "gelu":
        lines.append(f"{where}: --mlp gelu (the exact GELU) has no llama.cpp equivalent: its gpt2 uses the tanh "
                     "approximation (--mlp gelu_tanh, GPT-2's own)")
    if config.rope_scaling == "llama3" and (config.qkv_bias or config.qk_norm):
        lines.append(f"{where}: --rope-scaling llama3 with --qkv-bias or --qk-norm: llama.cpp reads Llama 3.1's "
                     "frequency factors in its llama architecture only")
    return lines


def target_for(checkpoint: Checkpoint) -> Target:
    config = checkpoint.model_config
    family, _problems = family_for_export(config)
    if family.name == "gpt2":
        return Target("gpt2", "gpt2", permute_qk=False)
    arch = "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"
    return Target(arch, "llama", permute_qk=arch == "llama")


# -- tensors ------------------------------------------------------------------------------------------

def permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Each head's rows from rotate-half order (x[i] pairs x[i + d/2]) to adjacent pairs (x[2i], x[2i + 1]):
    ``LlamaModel.permute`` of llama.cpp's convert_hf_to_gguf.py."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of ``permute``."""
    return weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


@dataclass(frozen=True)
class Placed:
    """One GGUF tensor: where it comes from in transformers' naming and whether its rows were permuted."""

    name: str               # llama.cpp's name, e.g. blk.0.attn_q.weight
    hf_name: str | None     # families.py's transformers name (None: rope_freqs, derived from the config)
    heads: int = 0          # permuted with this many heads (0: not permuted)


def gguf_tensors(checkpoint: Checkpoint, model: nn.Module, target: Target, gguf: Any
                 ) -> list[tuple[Placed, torch.Tensor]]:
    """Every tensor of the file, float32, in llama.cpp's names and layout, in the order it is written."""
    config = checkpoint.model_config
    # transformers' tensors, GPT-2's in nn.Linear's (out, in) layout: llama.cpp's, not Conv1D's transpose
    entries = [dataclasses.replace(entry, transpose=False)
               for entry in FAMILIES[target.family].weights(config, classifier=False)]
    weights = split_weights(model.state_dict(), entries, config)
    names = gguf.get_tensor_name_map(_arch_enum(target.arch, gguf), config.n_layer)
    placed = []
    for hf_name, tensor in weights.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise RuntimeError(f"gguf has no {target.arch} tensor name for {hf_name}")  # a bug: the table changed
        heads = 0
        if target.permute_qk and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.n_head if hf_name.endswith("q_proj.weight") else config.kv_heads
            tensor = permute(tensor, heads)
        placed.append((Placed(name, hf_name, heads), tensor.float()))
    if config.rope_scaling == "llama3":
        placed.append((Placed(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None),
                       rope_factors(config)))
    return placed


def rope_factors(config) -> torch.Tensor:
    """Llama 3.1's scaling as llama.cpp reads it: what each rotary frequency is divided by (lmkit's own
    ``llama3_frequencies``, so the two cannot drift)."""
    from lmkit.models.layers import llama3_frequencies

    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim)
    return inv_freq / llama3_frequencies(inv_freq, config)


def tensor_type(name: str, tensor: torch.Tensor, wanted: str, gguf: Any) -> Any:
    """The GGML type of one tensor: llama.cpp's converter's rules (1-D tensors, norms and position tables in f32;
    Q8_0 only where rows split into its blocks, else f16)."""
    types = gguf.GGMLQuantizationType
    if tensor.dim() <= 1 or name.endswith("_norm.weight") or name.startswith(("position_embd.", "rope_freqs.")):
        return types.F32
    qtype = {"f32": types.F32, "f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0}[wanted]
    block, _size = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if tensor.shape[-1] % block == 0 else types.F16


def file_type(wanted: str, gguf: Any) -> int:
    files = gguf.LlamaFileType
    return {"f32": files.ALL_F32, "f16": files.MOSTLY_F16, "bf16": files.MOSTLY_BF16, "q8_0": files.MOSTLY_Q8_0}[wanted]


def _arch_enum(arch: str, gguf: Any) -> Any:
    return next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)


# -- the file -----------------------------------------------------------------------------------------

def write(path: Path, checkpoint: Checkpoint, model: nn.Module, target: Target, vocab: Vocab, wanted: str,
          gguf: Any) -> dict[str, tuple[Placed, np.ndarray, Any]]:
    """Write the GGUF file; returns each tensor's placement, its float32 values and GGML type (for the check)."""
    writer = gguf.GGUFWriter(str(path), target.arch)
    _write_hyperparameters(writer, checkpoint, target, wanted, gguf)
    write_vocab(writer, vocab, checkpoint, gguf)
    written = {}
    for placed, tensor in gguf_tensors(checkpoint, model, target, gguf):
        qtype = tensor_type(placed.name, tensor, wanted, gguf)
        values = tensor.detach().cpu().numpy()
        writer.add_tensor(placed.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        written[placed.name] = (placed, values, qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return written


def _write_hyperparameters(writer: Any, checkpoint: Checkpoint, target: Target, wanted: str, gguf: Any) -> None:
    config = checkpoint.model_config
    writer.add_type("model")
    writer.add_name(f"{checkpoint.path.resolve().parent.name}/{checkpoint.path.name}")
    writer.add_file_type(file_type(wanted, gguf))
    if wanted == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.kv_heads)
    if target.family == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
    else:
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        if config.rope_scaling == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(config.rope_factor)
    # Where the file comes from, for people who meet it without lmkit (the manifest says the same for lmkit).
    writer.add_string("lmkit.version", __version__)
    writer.add_string("lmkit.source_checkpoint", checkpoint.artifact.id)
    writer.add_string("lmkit.objective", checkpoint.objective)
    if checkpoint.template is not None:  # SFT: "{prompt}" marks the instruction; llama.cpp has no key for it
        writer.add_string("lmkit.prompt_template", checkpoint.template)


def gguf_chat_template(checkpoint: Checkpoint) -> str | None:
    """The chat template as llama.cpp reads it: the Hugging Face export's (the default system prompt included)
    without transformers' {% generation %} markers."""
    if checkpoint.chat is None:
        return None
    return _GENERATION_TAGS.sub("", exported_template(checkpoint.chat))


def write_vocab(writer: Any, vocab: Vocab, checkpoint: Checkpoint, gguf: Any) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    framing = vocab.framing
    for add, value in ((writer.add_bos_token_id, framing.bos), (writer.add_eos_token_id, framing.eos),
                       (writer.add_unk_token_id, framing.unk), (writer.add_pad_token_id, framing.pad),
                       (writer.add_eot_token_id, framing.end_of_turn)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(framing.add_bos)
    writer.add_add_eos_token(False)
    template = gguf_chat_template(checkpoint)
    if template is not None:
        writer.add_chat_template(template)


# -- the check ----------------------------------------------------------------------------------------

def check_file(path: Path, written: dict[str, tuple[Placed, np.ndarray, Any]], vocab: Vocab, target: Target,
               checkpoint: Checkpoint, model: nn.Module, gguf: Any) -> float:
    """Read the file back with gguf's reader: every tensor must be the checkpoint's, rounded to its type, and the
    vocabulary and architecture what was meant; then lmkit runs on the weights read back, and the largest
    difference from its own logits (what the type's rounding costs) is returned. A mismatch is a bug."""
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    if arch != target.arch or tokens != vocab.tokens:
        raise RuntimeError(f"{path}: reads back as {arch} with {len(tokens)} tokens")  # a bug
    found = {tensor.name: tensor for tensor in reader.tensors}
    if set(found) != set(written):
        raise RuntimeError(f"{path}: holds tensors {sorted(set(found) ^ set(written))[:4]} it should not")  # a bug
    weights: dict[str, torch.Tensor] = {}
    for name, (placed, values, qtype) in written.items():
        tensor = found[name]
        read = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(values.shape)
        expected = gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype).reshape(values.shape)
        if tensor.tensor_type != qtype or not np.array_equal(read, expected):
            raise RuntimeError(f"{path}: {name} does not read back as written")  # a bug
        if placed.hf_name is not None:
            weight = torch.from_numpy(np.array(read, dtype=np.float32))
            weights[placed.hf_name] = unpermute(weight, placed.heads) if placed.heads else weight
    return _logit_difference(weights, target, checkpoint, model)


@torch.no_grad()
def _logit_difference(weights: dict[str, torch.Tensor], target: Target, checkpoint: Checkpoint,
                      model: nn.Module) -> float:
    """Max |logits of lmkit with the weights read back - lmkit's own| on the export check's probe inputs."""
    import copy

    config = checkpoint.model_config
    state = {entry.ours: torch.cat([weights[name] for name in entry.theirs], dim=0)
             for entry in FAMILIES[target.family].weights(config, classifier=False)}
    reread = copy.deepcopy(model)
    missing, unexpected = reread.load_state_dict(state, strict=False)
    learned = {name for name, _ in model.named_parameters()}
    if unexpected or set(missing) & (learned - ({"lm_head.weight"} if config.tie_embeddings else set())):
        raise RuntimeError(f"the GGUF tensors do not rebuild the model ({missing[:3]}, {unexpected[:3]})")  # a bug
    difference = 0.0
    for idx, _mask in probe_batches(checkpoint):
        ours, theirs = model(idx)[0], reread(idx)[0]  # (B, T, V)
        difference = max(difference, (ours.float() - theirs.float()).abs().max().item())
    return difference
