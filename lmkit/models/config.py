"""The model configuration: one small, JSON-serializable dataclass for every architecture.

A checkpoint stores ``ModelConfig.to_dict()``; ``ModelConfig.from_dict`` rebuilds it, so a model
is always rebuilt from names and numbers, never from pickled classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lmkit.config import check_mapping, flag_name, option, validate
from lmkit.errors import ConfigError

ARCHS = ("gpt", "bert", "lstm")
MLPS = ("swiglu", "gelu", "gelu_tanh")
NORMS = ("rms", "layer")
POSITIONS = ("rope", "learned")
ROPE_SCALINGS = ("none", "llama3", "linear", "ntk")
# The special tokens have fixed ids 0..6 across lmkit (lmkit/tokenizer.py); a vocabulary holds them all.
MIN_VOCAB_SIZE = 7
# Fields that only transformers (gpt, bert) use; an LSTM refuses non-default values rather than ignore them.
TRANSFORMER_ONLY = ("n_head", "d_ff", "mlp", "qk_norm", "rope_theta", "norm_eps", "n_kv_head", "head_size", "norm",
                    "positions", "bias", "qkv_bias", "post_norm", "type_vocab_size", "pooler", "sentence_head",
                    "rope_scaling",
                    "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_length",
                    "share_layers", "embedding_dim")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    arch: str = option(help="Architecture: gpt (decoder), bert (encoder) or lstm.")
    vocab_size: int = option(help="Vocabulary size (the tokenizer's, special tokens included).")
    block_size: int = option(256, "Longest sequence the model accepts (length of the rotary tables).")
    n_layer: int = option(4, "Number of transformer blocks / LSTM layers.")
    n_head: int = option(4, "Attention heads per block (gpt, bert); must divide --d-model unless --head-size is set.")
    n_kv_head: int = option(0, "Key/value heads: fewer than --n-head is grouped-query attention (Ainslie et al. "
                            "2023; Llama 3, Qwen, Mistral); must divide --n-head; 0 = --n-head.")
    head_size: int = option(0, "Width of one attention head; 0 = --d-model / --n-head (Qwen3 decouples them).")
    d_model: int = option(256, "Width of the residual stream / LSTM hidden state.")
    d_ff: int = option(0, "Hidden width of the feed-forward layer; 0 picks the default: 8/3*d_model rounded up "
                       "to a multiple of 64 for swiglu (Shazeer 2020), 4*d_model for gelu.")
    mlp: str = option("swiglu", "Feed-forward of gpt and bert blocks: swiglu (Llama), gelu (BERT: exact GELU) or "
                      "gelu_tanh (GPT-2: its tanh approximation).", choices=MLPS)
    norm: str = option("rms", "Normalization layers: rms (RMSNorm: Llama, lmkit's modern models) or layer "
                       "(LayerNorm with bias: GPT-2, BERT).", choices=NORMS)
    positions: str = option("rope", "Position encoding: rope (rotary, relative) or learned (an absolute position "
                            "table of --block-size rows: GPT-2, BERT).", choices=POSITIONS)
    bias: bool = option(False, "Biases in every linear layer (GPT-2, BERT); modern models have none.")
    qkv_bias: bool = option(False, "Biases in the query/key/value projection only (Qwen2).")
    post_norm: bool = option(False, "Post-norm blocks, norm(x + f(x)), with a norm after the embeddings and none at "
                             "the end (the original Transformer and BERT); default pre-norm, x + f(norm(x)).")
    type_vocab_size: int = option(0, "Token-type (segment) embeddings, as BERT's sentence A/B; 0 = none.")
    pooler: bool = option(False, "BERT's pooler: a dense layer with tanh over [CLS], read by a classifier head.")
    sentence_head: bool = option(False, "A 2-way head on the pooler, trained by a sentence-pair objective (BERT's "
                                 "next-sentence or ALBERT's sentence-order prediction); needs --pooler.")
    qk_norm: bool = option(False, "RMSNorm on each head's queries and keys before attention (OLMo 2, Gemma 3).")
    rope_theta: float = option(10000.0, "Base of the rotary position embedding frequencies (Su et al. 2021).")
    rope_scaling: str = option("none", "Rotary frequency scaling: none; llama3 (Llama 3.1+: long wavelengths "
                               "stretched by --rope-factor, smoothly between the two wavelength bounds); linear "
                               "(position interpolation, Chen et al. 2023: every frequency divided by --rope-factor); "
                               "ntk (NTK-aware: the base theta raised so that the lowest frequency is divided by "
                               "--rope-factor and the highest kept).", choices=ROPE_SCALINGS)
    rope_factor: float = option(8.0, "llama3, linear and ntk scaling: how much the context is stretched.")
    rope_low_freq_factor: float = option(1.0, "llama3 scaling: wavelengths above original length / this are "
                                         "stretched.")
    rope_high_freq_factor: float = option(4.0, "llama3 scaling: wavelengths below original length / this are kept.")
    rope_original_length: int = option(8192, "llama3 scaling: the context length the model was pretrained with.")
    dropout: float = option(0.0, "Dropout probability on embeddings, attention and residual branches.")
    tie_embeddings: bool = option(True, "Share the input embedding matrix with the output projection "
                                  "(Press & Wolf 2017).")
    norm_eps: float = option(1e-6, "Epsilon of the normalization layers.")
    share_layers: int = option(0, "Cross-layer parameter sharing (ALBERT, Lan et al. 2020): this many distinct "
                               "blocks, each used by --n-layer / this many consecutive layers (1: one block for "
                               "every layer); 0 = none. Must divide --n-layer.")
    embedding_dim: int = option(0, "Factorized embedding (ALBERT): tokens are embedded in this width and projected "
                                "to --d-model (and the output back to it); 0 = --d-model.")

    def __post_init__(self) -> None:
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"--arch: unknown architecture {self.arch!r} (choose one of {', '.join(ARCHS)})")
        if self.vocab_size < MIN_VOCAB_SIZE:
            problems.append(f"--vocab-size: must be at least {MIN_VOCAB_SIZE} (the special tokens), "
                            f"got {self.vocab_size}")
        for name in ("block_size", "n_layer", "d_model"):
            if getattr(self, name) < 1:
                problems.append(f"{flag_name(name)}: must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"--dropout: must be in [0, 1), got {self.dropout}")
        if self.arch == "lstm":
            for name in TRANSFORMER_ONLY:
                if getattr(self, name) != _DEFAULTS[name]:
                    problems.append(f"{flag_name(name)}: has no effect on an LSTM (--arch lstm); drop it")
        else:
            problems.extend(self._transformer_problems())
        validate(self, problems)

    def _transformer_problems(self) -> list[str]:
        problems = []
        if self.n_head < 1:
            problems.append(f"--n-head: must be positive, got {self.n_head}")
        elif self.head_size < 0:
            problems.append(f"--head-size: must be 0 (default) or positive, got {self.head_size}")
        elif not self.head_size and self.d_model % self.n_head != 0:
            problems.append(f"--n-head: must divide --d-model ({self.d_model} % {self.n_head} != 0)")
        elif self.positions == "rope" and self.head_dim % 2 != 0:
            problems.append(f"--n-head: the head size (--head-size, or --d-model/--n-head) must be even for rotary "
                            f"embeddings (got {self.head_dim})")
        elif self.n_kv_head < 0 or (self.n_kv_head and self.n_head % self.n_kv_head != 0):
            problems.append(f"--n-kv-head: must be 0 (= --n-head) or divide --n-head ({self.n_head}), "
                            f"got {self.n_kv_head}")
        for name, value, choices in (("norm", self.norm, NORMS), ("positions", self.positions, POSITIONS)):
            if value not in choices:
                problems.append(f"--{name}: unknown value {value!r} (choose one of {', '.join(choices)})")
        if self.type_vocab_size < 0:
            problems.append(f"--type-vocab-size: must be 0 (none) or positive, got {self.type_vocab_size}")
        if self.d_ff < 0:
            problems.append(f"--d-ff: must be 0 (default) or positive, got {self.d_ff}")
        if self.mlp not in MLPS:
            problems.append(f"--mlp: unknown feed-forward type {self.mlp!r} (choose one of {', '.join(MLPS)})")
        if self.rope_scaling not in ROPE_SCALINGS:
            problems.append(f"--rope-scaling: unknown value {self.rope_scaling!r} (choose one of "
                            f"{', '.join(ROPE_SCALINGS)})")
        elif self.rope_scaling == "llama3" and not (self.rope_factor > 0 and self.rope_high_freq_factor
                                                     > self.rope_low_freq_factor > 0 and self.rope_original_length > 0):
            problems.append("--rope-scaling llama3: needs --rope-factor > 0, --rope-high-freq-factor > "
                            "--rope-low-freq-factor > 0 and --rope-original-length > 0")
        if self.rope_scaling in ("linear", "ntk") and self.rope_factor < 1:
            problems.append(f"--rope-factor: {self.rope_scaling} scaling stretches the context, so the factor must be "
                            f"at least 1, got {self.rope_factor}")
        if self.rope_theta <= 0:
            problems.append(f"--rope-theta: must be positive, got {self.rope_theta}")
        if self.norm_eps <= 0:
            problems.append(f"--norm-eps: must be positive, got {self.norm_eps}")
        if self.share_layers < 0 or (self.share_layers and self.n_layer % self.share_layers):
            problems.append(f"--share-layers: must be 0 (none) or divide --n-layer ({self.n_layer}), got "
                            f"{self.share_layers}")
        if self.sentence_head and not (self.arch == "bert" and self.pooler):
            problems.append("--sentence-head: a sentence-pair head reads BERT's pooler (an encoder with --pooler)")
        if self.embedding_dim < 0:
            problems.append(f"--embedding-dim: must be 0 (= --d-model) or positive, got {self.embedding_dim}")
        return problems

    @property
    def embedding_width(self) -> int:
        """The width tokens are embedded in: --embedding-dim, or --d-model."""
        return self.embedding_dim or self.d_model

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads (n_head unless grouped-query attention)."""
        return self.n_kv_head or self.n_head

    @property
    def family(self) -> str:
        """What the settings amount to, in words, for --help, lmkit info and messages."""
        if self.arch == "lstm":
            return "LSTM"
        classic = self.norm == "layer" and self.positions == "learned"
        if self.arch == "bert":
            if classic and self.post_norm:
                return "classic BERT (post-norm LayerNorm, learned positions, GELU)"
            return f"modern encoder ({'RMSNorm' if self.norm == 'rms' else 'LayerNorm'}, " \
                   f"{'rotary' if self.positions == 'rope' else 'learned'} positions, {self.mlp})"
        if classic and not self.post_norm:
            return "GPT-2 (LayerNorm, learned positions, GELU, biases)"
        attention = f", grouped-query attention ({self.kv_heads} kv heads)" if self.kv_heads < self.n_head else ""
        return f"Llama-style decoder ({'RMSNorm' if self.norm == 'rms' else 'LayerNorm'}, " \
               f"{'rotary' if self.positions == 'rope' else 'learned'} positions, {self.mlp}{attention})"

    @property
    def ffn_dim(self) -> int:
        """The feed-forward hidden width, with the 0 = default rule applied."""
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":  # 8/3 keeps the parameter count of a 4x GELU MLP with three matrices
            return _round_up(-(-8 * self.d_model // 3), 64)
        return 4 * self.d_model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from ``to_dict()`` output (e.g. a checkpoint manifest); every problem is reported."""
        checked, problems = check_mapping(cls, values, "model config")
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.name not in values:
                problems.append(f"model config: missing key {f.name!r}")
        if problems:
            raise ConfigError(problems)
        return cls(**checked)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
