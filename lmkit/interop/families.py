"""The Hugging Face families lmkit reads and writes: one mapping table per family, used both ways.

``lmkit import`` reads a transformers directory through a family's ``from_hf`` (config) and
``weights`` (tensor names); ``lmkit export`` writes a checkpoint through ``to_hf`` and the same
``weights``. An entry maps one lmkit tensor to one or more transformers tensors, concatenated along
the first dimension (lmkit's fused ``qkv`` is q, k, v stacked), transposed for GPT-2's ``Conv1D``
(which stores (in, out)). ``{i}`` is a block; names are relative to the body (``model.``,
``transformer.``, ``bert.``); a classifier's lmkit names start with ``backbone.``.

llama / mistral / qwen2 / qwen3 (``model.``): lmkit's modern decoder. RoPE pairs (x[i], x[i + hd/2])
("rotate half") in both, so no tensor is permuted.

| lmkit                          | transformers                                  | note                        |
| ------------------------------ | --------------------------------------------- | --------------------------- |
| tok_emb.weight                 | embed_tokens.weight                           |                             |
| blocks.{i}.attn_norm.weight    | layers.{i}.input_layernorm.weight             | RMSNorm                     |
| blocks.{i}.attn.qkv.weight     | layers.{i}.self_attn.{q,k,v}_proj.weight      | stacked; k, v: n_kv_head    |
| blocks.{i}.attn.qkv.bias       | layers.{i}.self_attn.{q,k,v}_proj.bias        | qwen2 (qkv_bias)            |
| blocks.{i}.attn.{q,k}_norm.weight | layers.{i}.self_attn.{q,k}_norm.weight     | qwen3 (qk_norm)             |
| blocks.{i}.attn.out_proj.weight | layers.{i}.self_attn.o_proj.weight           |                             |
| blocks.{i}.mlp_norm.weight     | layers.{i}.post_attention_layernorm.weight    |                             |
| blocks.{i}.mlp.{gate,up,down}.weight | layers.{i}.mlp.{gate,up,down}_proj.weight | SwiGLU                     |
| final_norm.weight              | norm.weight                                   |                             |
| lm_head.weight                 | lm_head.weight (no prefix)                    | untied only                 |
| head.weight                    | score.weight (no prefix)                      | classifiers                 |

gpt2 (``transformer.``): the classic GPT-2.

| lmkit                          | transformers                    | note                         |
| ------------------------------ | ------------------------------- | ---------------------------- |
| tok_emb.weight                 | wte.weight                      | tied with the output         |
| embeddings.pos_emb.weight      | wpe.weight                      | learned positions            |
| blocks.{i}.attn_norm.*         | h.{i}.ln_1.*                    | LayerNorm weight and bias    |
| blocks.{i}.attn.qkv.weight     | h.{i}.attn.c_attn.weight        | Conv1D: transposed           |
| blocks.{i}.attn.qkv.bias       | h.{i}.attn.c_attn.bias          |                              |
| blocks.{i}.attn.out_proj.*     | h.{i}.attn.c_proj.*             | weight transposed            |
| blocks.{i}.mlp_norm.*          | h.{i}.ln_2.*                    |                              |
| blocks.{i}.mlp.up.*            | h.{i}.mlp.c_fc.*                | weight transposed            |
| blocks.{i}.mlp.down.*          | h.{i}.mlp.c_proj.*              | weight transposed            |
| final_norm.*                   | ln_f.*                          |                              |
| head.weight                    | score.weight (no prefix)        | classifiers                  |

bert (``bert.``): the classic BERT.

| lmkit                          | transformers                                   | note                  |
| ------------------------------ | ---------------------------------------------- | --------------------- |
| tok_emb.weight                 | embeddings.word_embeddings.weight              | tied with the decoder |
| embeddings.pos_emb.weight      | embeddings.position_embeddings.weight          |                       |
| embeddings.type_emb.weight     | embeddings.token_type_embeddings.weight        | segments              |
| embeddings.norm.*              | embeddings.LayerNorm.*                         |                       |
| blocks.{i}.attn.qkv.*          | encoder.layer.{i}.attention.self.{query,key,value}.* | stacked         |
| blocks.{i}.attn.out_proj.*     | encoder.layer.{i}.attention.output.dense.*     |                       |
| blocks.{i}.attn_norm.*         | encoder.layer.{i}.attention.output.LayerNorm.* | post-norm             |
| blocks.{i}.mlp.up.*            | encoder.layer.{i}.intermediate.dense.*         |                       |
| blocks.{i}.mlp.down.*          | encoder.layer.{i}.output.dense.*               |                       |
| blocks.{i}.mlp_norm.*          | encoder.layer.{i}.output.LayerNorm.*           |                       |
| pooler.*                       | pooler.dense.*                                 | BertModel, classifiers |
| mlm_head.dense.*               | cls.predictions.transform.dense.* (no prefix)  |                       |
| mlm_head.norm.*                | cls.predictions.transform.LayerNorm.*          |                       |
| lm_head.bias                   | cls.predictions.bias                           | decoder bias          |
| head.*                         | classifier.* (no prefix)                       | classifiers           |

RoPE scaling: plain RoPE and Llama 3.1's ``llama3`` scaling (ModelConfig ``rope_scaling``). What a family
cannot express exactly (other RoPE scalings, biases where lmkit has none, another activation) is refused
by name: a near miss would be a wrong model. A sliding window shorter than the model's length becomes
its block size (full attention over at most W tokens is sliding-window attention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lmkit.errors import UserError
from lmkit.models.config import ModelConfig


@dataclass(frozen=True)
class Entry:
    """One lmkit tensor and the transformers tensors it is made of (stacked along dim 0)."""

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False   # GPT-2's Conv1D stores (in, out)
    prefixed: bool = True     # False: the name is outside the body (lm_head, score, cls.*)


@dataclass(frozen=True)
class Target:
    """The transformers class a checkpoint becomes, or an imported directory is."""

    family: str        # a key of FAMILIES
    model_type: str    # transformers' model_type: llama, qwen2, qwen3, mistral, gpt2, bert
    architecture: str  # e.g. "LlamaForCausalLM"
    classifier: bool


class Family:
    name: str
    model_types: tuple[str, ...]
    prefix: str                        # the body's prefix in a task model's state dict
    lm_suffix: str                     # the language-model class: {Prefix}{lm_suffix}

    def class_names(self, model_type: str) -> tuple[str, str, str]:
        """(language model, sequence classifier, bare body) class names of ``model_type``."""
        stem = TYPE_STEMS[model_type]
        return stem + self.lm_suffix, stem + "ForSequenceClassification", stem + "Model"

    # -- config ----------------------------------------------------------------------------------------
    def from_hf(self, hf: dict[str, Any], where: str) -> dict[str, Any]:
        raise NotImplementedError

    def to_hf(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        raise NotImplementedError

    def export_problems(self, config: ModelConfig) -> list[str]:
        """Why ``config`` has no exact equivalent in this family (empty: it has one)."""
        raise NotImplementedError

    # -- weights ---------------------------------------------------------------------------------------
    def body(self, config: ModelConfig) -> list[Entry]:
        raise NotImplementedError

    def lm_head(self, config: ModelConfig) -> list[Entry]:
        raise NotImplementedError

    def classifier_head(self, config: ModelConfig) -> list[Entry]:
        return [Entry("head.weight", ("score.weight",), prefixed=False)]

    def weights(self, config: ModelConfig, classifier: bool) -> list[Entry]:
        """Every tensor of the lmkit model (a classifier's under ``backbone.``) with its transformers names,
        prefixes applied."""
        entries = []
        for entry in self.body(config):
            ours = ("backbone." + entry.ours) if classifier else entry.ours
            theirs = tuple(self.prefix + name for name in entry.theirs)
            entries.append(dataclasses.replace(entry, ours=ours, theirs=theirs))
        for entry in (self.classifier_head(config) if classifier else self.lm_head(config)):
            theirs = entry.theirs if not entry.prefixed else tuple(self.prefix + name for name in entry.theirs)
            entries.append(dataclasses.replace(entry, theirs=theirs))
        return entries


def _require(hf: dict[str, Any], where: str, checks: list[tuple[str, Any, Any]]) -> None:
    """Refuse settings lmkit cannot reproduce: (key, value found, what lmkit supports)."""
    problems = [f"{where}: {key} = {found!r} is not supported (lmkit reproduces {supported})"
                for key, found, supported in checks if found is not None and found != supported]
    if problems:
        raise UserError("; ".join(problems))


# transformers' GELU names and lmkit's --mlp for them.
_GELUS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def _gelu(hf: dict[str, Any], key: str, default: str, where: str) -> str:
    activation = hf.get(key, default)
    if activation not in _GELUS:
        raise UserError(f"{where}: {key} = {activation!r} is not supported (lmkit reproduces {', '.join(_GELUS)})")
    return _GELUS[activation]


def _rope(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """ModelConfig's rotary settings of a transformers config (transformers 5's rope_parameters, or 4's
    rope_theta and rope_scaling)."""
    parameters = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    kind = parameters.get("rope_type") or parameters.get("type") or "default"
    theta = float(parameters.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    if kind == "default":
        return {"rope_theta": theta}
    if kind == "linear":
        return {"rope_theta": theta, "rope_scaling": "linear", "rope_factor": float(parameters["factor"])}
    if kind == "llama3":
        return {"rope_theta": theta, "rope_scaling": "llama3", "rope_factor": float(parameters["factor"]),
                "rope_low_freq_factor": float(parameters["low_freq_factor"]),
                "rope_high_freq_factor": float(parameters["high_freq_factor"]),
                "rope_original_length": int(parameters["original_max_position_embeddings"])}
    raise UserError(f"{where}: rope scaling {kind!r} is not supported (lmkit reproduces plain RoPE, 'linear' "
                    "position interpolation and Llama 3.1's 'llama3' scaling)")


class LlamaFamily(Family):
    """Llama, Mistral, Qwen2 and Qwen3: lmkit's modern decoder (grouped-query attention included)."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    prefix = "model."
    lm_suffix = "ForCausalLM"

    def from_hf(self, hf: dict[str, Any], where: str) -> dict[str, Any]:
        model_type = hf["model_type"]
        _require(hf, where, [("hidden_act", hf.get("hidden_act"), "silu"), ("mlp_bias", hf.get("mlp_bias"), False)])
        if model_type != "qwen2":
            _require(hf, where, [("attention_bias", hf.get("attention_bias"), False)])
        d_model, n_head = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        head_dim = int(hf.get("head_dim") or d_model // n_head)
        block_size = int(hf.get("max_position_embeddings") or 2048)
        window = hf.get("sliding_window")
        uses_window = hf.get("use_sliding_window", model_type == "mistral")
        if window and uses_window and int(window) < block_size:
            # Attention within a window of W keys is full attention on sequences of at most W tokens.
            block_size = int(window)
        return dict(
            arch="gpt", vocab_size=int(hf["vocab_size"]), block_size=block_size, n_layer=int(hf["num_hidden_layers"]),
            n_head=n_head, n_kv_head=int(hf.get("num_key_value_heads") or n_head),
            head_size=0 if head_dim * n_head == d_model else head_dim, d_model=d_model,
            d_ff=int(hf["intermediate_size"]), mlp="swiglu", norm="rms", positions="rope",
            qk_norm=model_type == "qwen3", qkv_bias=model_type == "qwen2", **_rope(hf, where),
            norm_eps=float(hf.get("rms_norm_eps") or 1e-6), dropout=float(hf.get("attention_dropout") or 0.0),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)))

    def export_problems(self, config: ModelConfig) -> list[str]:
        problems = []
        if config.mlp != "swiglu":
            problems.append(f"--mlp {config.mlp} (Llama's feed-forward is gated SwiGLU)")
        if config.norm != "rms" or config.positions != "rope" or config.post_norm or config.bias:
            problems.append("LayerNorm, learned positions, post-norm or biases (Llama is pre-norm RMSNorm, RoPE, "
                            "no biases)")
        if config.qkv_bias and config.qk_norm:
            problems.append("--qkv-bias with --qk-norm (Qwen2 has the biases, Qwen3 the norms, none both)")
        if config.type_vocab_size:
            problems.append("token-type embeddings")
        if config.rope_scaling == "ntk":
            problems.append("--rope-scaling ntk (transformers has no static NTK scaling; linear position "
                            "interpolation exports)")
        if config.rope_scaling != "none" and config.qk_norm:
            problems.append("--rope-scaling with --qk-norm (lmkit exports llama3 scaling on Llama only)")
        return problems

    def model_type_for(self, config: ModelConfig) -> str:
        return "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"

    def to_hf(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        values = dict(
            vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.ffn_dim,
            num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
            num_key_value_heads=config.kv_heads, head_dim=config.head_dim, hidden_act="silu",
            max_position_embeddings=config.block_size, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
            attention_dropout=0.0, tie_word_embeddings=config.tie_embeddings)
        if config.rope_scaling == "linear":
            values["rope_parameters"] = {"rope_type": "linear", "rope_theta": config.rope_theta,
                                         "factor": config.rope_factor}
        if config.rope_scaling == "llama3":
            values["rope_parameters"] = {
                "rope_type": "llama3", "rope_theta": config.rope_theta, "factor": config.rope_factor,
                "low_freq_factor": config.rope_low_freq_factor, "high_freq_factor": config.rope_high_freq_factor,
                "original_max_position_embeddings": config.rope_original_length}
        if model_type == "llama":
            values.update(attention_bias=False, mlp_bias=False)
        if model_type == "qwen3":
            values.update(attention_bias=False)
        if model_type in ("qwen2", "qwen3"):
            values.update(use_sliding_window=False, sliding_window=None)
        if model_type == "mistral":
            values.update(sliding_window=None)
        return values

    def body(self, config: ModelConfig) -> list[Entry]:
        entries = [Entry("tok_emb.weight", ("embed_tokens.weight",)), Entry("final_norm.weight", ("norm.weight",))]
        for i in range(config.n_layer):
            ours, theirs = f"blocks.{i}.", f"layers.{i}."
            attention = theirs + "self_attn."
            entries += [
                Entry(ours + "attn_norm.weight", (theirs + "input_layernorm.weight",)),
                Entry(ours + "attn.qkv.weight", tuple(attention + f"{p}_proj.weight" for p in "qkv")),
                Entry(ours + "attn.out_proj.weight", (attention + "o_proj.weight",)),
                Entry(ours + "mlp_norm.weight", (theirs + "post_attention_layernorm.weight",)),
                Entry(ours + "mlp.gate.weight", (theirs + "mlp.gate_proj.weight",)),
                Entry(ours + "mlp.up.weight", (theirs + "mlp.up_proj.weight",)),
                Entry(ours + "mlp.down.weight", (theirs + "mlp.down_proj.weight",)),
            ]
            if config.qkv_bias:
                entries.append(Entry(ours + "attn.qkv.bias", tuple(attention + f"{p}_proj.bias" for p in "qkv")))
            if config.qk_norm:
                entries += [Entry(ours + "attn.q_norm.weight", (attention + "q_norm.weight",)),
                            Entry(ours + "attn.k_norm.weight", (attention + "k_norm.weight",))]
        return entries

    def lm_head(self, config: ModelConfig) -> list[Entry]:
        return [] if config.tie_embeddings else [Entry("lm_head.weight", ("lm_head.weight",), prefixed=False)]


class GPT2Family(Family):
    name = "gpt2"
    model_types = ("gpt2",)
    prefix = "transformer."
    lm_suffix = "LMHeadModel"

    def from_hf(self, hf: dict[str, Any], where: str) -> dict[str, Any]:
        mlp = _gelu(hf, "activation_function", "gelu_new", where)
        _require(hf, where, [("scale_attn_by_inverse_layer_idx", hf.get("scale_attn_by_inverse_layer_idx"), False),
                             ("scale_attn_weights", hf.get("scale_attn_weights"), True),
                             ("add_cross_attention", hf.get("add_cross_attention"), False),
                             ("tie_word_embeddings", hf.get("tie_word_embeddings"), True)])
        d_model = int(hf["n_embd"])
        return dict(arch="gpt", vocab_size=int(hf["vocab_size"]), block_size=int(hf["n_positions"]),
                    n_layer=int(hf["n_layer"]), n_head=int(hf["n_head"]), d_model=d_model,
                    d_ff=int(hf.get("n_inner") or 4 * d_model), mlp=mlp, norm="layer", positions="learned", bias=True,
                    norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), dropout=float(hf.get("resid_pdrop", 0.0)),
                    tie_embeddings=True)

    def export_problems(self, config: ModelConfig) -> list[str]:
        problems = []
        if config.mlp not in ("gelu_tanh", "gelu"):
            problems.append(f"--mlp {config.mlp} (GPT-2's feed-forward is GELU)")
        if config.norm != "layer" or config.positions != "learned" or not config.bias or config.post_norm:
            problems.append("GPT-2 is pre-norm LayerNorm with learned positions and biases")
        if config.kv_heads != config.n_head or config.head_size or config.qk_norm or not config.tie_embeddings:
            problems.append("grouped-query attention, --head-size, --qk-norm or an untied head")
        return problems

    def model_type_for(self, config: ModelConfig) -> str:
        return "gpt2"

    def to_hf(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        return dict(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.d_model,
                    n_layer=config.n_layer, n_head=config.n_head, n_inner=config.ffn_dim,
                    activation_function="gelu_new" if config.mlp == "gelu_tanh" else "gelu",
                    layer_norm_epsilon=config.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    tie_word_embeddings=True)

    def body(self, config: ModelConfig) -> list[Entry]:
        entries = [Entry("tok_emb.weight", ("wte.weight",)), Entry("embeddings.pos_emb.weight", ("wpe.weight",))]
        for name in ("weight", "bias"):
            entries.append(Entry(f"final_norm.{name}", (f"ln_f.{name}",)))
        for i in range(config.n_layer):
            ours, theirs = f"blocks.{i}.", f"h.{i}."
            for name in ("weight", "bias"):
                conv = name == "weight"
                entries += [
                    Entry(ours + f"attn_norm.{name}", (theirs + f"ln_1.{name}",)),
                    Entry(ours + f"attn.qkv.{name}", (theirs + f"attn.c_attn.{name}",), transpose=conv),
                    Entry(ours + f"attn.out_proj.{name}", (theirs + f"attn.c_proj.{name}",), transpose=conv),
                    Entry(ours + f"mlp_norm.{name}", (theirs + f"ln_2.{name}",)),
                    Entry(ours + f"mlp.up.{name}", (theirs + f"mlp.c_fc.{name}",), transpose=conv),
                    Entry(ours + f"mlp.down.{name}", (theirs + f"mlp.c_proj.{name}",), transpose=conv),
                ]
        return entries

    def lm_head(self, config: ModelConfig) -> list[Entry]:
        return []  # tied to wte


class BertFamily(Family):
    name = "bert"
    model_types = ("bert",)
    prefix = "bert."
    lm_suffix = "ForMaskedLM"

    def from_hf(self, hf: dict[str, Any], where: str) -> dict[str, Any]:
        mlp = _gelu(hf, "hidden_act", "gelu", where)
        _require(hf, where, [("position_embedding_type", hf.get("position_embedding_type"), "absolute"),
                             ("is_decoder", hf.get("is_decoder"), False)])
        return dict(arch="bert", vocab_size=int(hf["vocab_size"]), block_size=int(hf["max_position_embeddings"]),
                    n_layer=int(hf["num_hidden_layers"]), n_head=int(hf["num_attention_heads"]),
                    d_model=int(hf["hidden_size"]), d_ff=int(hf["intermediate_size"]), mlp=mlp, norm="layer",
                    positions="learned", bias=True, post_norm=True, type_vocab_size=int(hf.get("type_vocab_size", 2)),
                    norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                    dropout=float(hf.get("hidden_dropout_prob", 0.0)),
                    tie_embeddings=bool(hf.get("tie_word_embeddings", True)))

    def export_problems(self, config: ModelConfig) -> list[str]:
        problems = []
        if not (config.post_norm and config.norm == "layer" and config.positions == "learned" and config.bias):
            problems.append("lmkit's modern encoder (pre-norm RMSNorm, rotary positions, no biases): "
                            "BertForMaskedLM is post-norm LayerNorm with learned absolute positions and biases, and "
                            "no other transformers encoder matches it; pretrain a classic bert-* preset to export")
        elif config.mlp == "swiglu":
            problems.append("--mlp swiglu (BERT's feed-forward is GELU)")
        if config.kv_heads != config.n_head or config.head_size or config.qk_norm or config.qkv_bias:
            problems.append("grouped-query attention, --head-size, --qk-norm or --qkv-bias")
        if not config.tie_embeddings:
            problems.append("an untied MLM decoder")
        return problems

    def model_type_for(self, config: ModelConfig) -> str:
        return "bert"

    def to_hf(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        # A model without token types exports a single zero row: adding it changes nothing.
        return dict(vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layer,
                    num_attention_heads=config.n_head, intermediate_size=config.ffn_dim,
                    hidden_act="gelu" if config.mlp == "gelu" else "gelu_new",
                    max_position_embeddings=config.block_size, type_vocab_size=config.type_vocab_size or 1,
                    layer_norm_eps=config.norm_eps, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    position_embedding_type="absolute", tie_word_embeddings=True)

    def body(self, config: ModelConfig) -> list[Entry]:
        entries = [Entry("tok_emb.weight", ("embeddings.word_embeddings.weight",)),
                   Entry("embeddings.pos_emb.weight", ("embeddings.position_embeddings.weight",))]
        if config.type_vocab_size:
            entries.append(Entry("embeddings.type_emb.weight", ("embeddings.token_type_embeddings.weight",)))
        for name in ("weight", "bias"):
            entries.append(Entry(f"embeddings.norm.{name}", (f"embeddings.LayerNorm.{name}",)))
            if config.pooler:
                entries.append(Entry(f"pooler.{name}", (f"pooler.dense.{name}",)))
            for i in range(config.n_layer):
                ours, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
                entries += [
                    Entry(ours + f"attn.qkv.{name}",
                          tuple(theirs + f"attention.self.{p}.{name}" for p in ("query", "key", "value"))),
                    Entry(ours + f"attn.out_proj.{name}", (theirs + f"attention.output.dense.{name}",)),
                    Entry(ours + f"attn_norm.{name}", (theirs + f"attention.output.LayerNorm.{name}",)),
                    Entry(ours + f"mlp.up.{name}", (theirs + f"intermediate.dense.{name}",)),
                    Entry(ours + f"mlp.down.{name}", (theirs + f"output.dense.{name}",)),
                    Entry(ours + f"mlp_norm.{name}", (theirs + f"output.LayerNorm.{name}",)),
                ]
        return entries

    def lm_head(self, config: ModelConfig) -> list[Entry]:
        head = "cls.predictions."
        # Tied, the decoder's bias is cls.predictions.bias; untied, transformers 5 reads decoder.bias (and
        # cls.predictions.bias is a leftover its forward never uses).
        if config.tie_embeddings:
            entries = [Entry("lm_head.bias", (head + "bias",), prefixed=False)]
        else:
            entries = [Entry("lm_head.weight", (head + "decoder.weight",), prefixed=False),
                       Entry("lm_head.bias", (head + "decoder.bias",), prefixed=False)]
        for name in ("weight", "bias"):
            entries += [Entry(f"mlm_head.dense.{name}", (head + f"transform.dense.{name}",), prefixed=False),
                        Entry(f"mlm_head.norm.{name}", (head + f"transform.LayerNorm.{name}",), prefixed=False)]
        return entries

    def classifier_head(self, config: ModelConfig) -> list[Entry]:
        return [Entry(f"head.{name}", (f"classifier.{name}",), prefixed=False) for name in ("weight", "bias")]


FAMILIES: dict[str, Family] = {family.name: family for family in (LlamaFamily(), GPT2Family(), BertFamily())}
TYPE_STEMS = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gpt2": "GPT2",
              "bert": "Bert"}
FAMILY_OF_TYPE = {model_type: family for family in FAMILIES.values() for model_type in family.model_types}


def supported_architectures() -> list[str]:
    """Every transformers class ``lmkit import`` reads, for messages."""
    names = []
    for model_type, family in FAMILY_OF_TYPE.items():
        lm, classifier, base = family.class_names(model_type)
        names += [lm, base] if model_type in ("bert", "gpt2") else [lm]
    return names


def family_for_export(config: ModelConfig) -> tuple[Family | None, list[str]]:
    """The family an lmkit model exports to exactly, or None and why not (one reason per line)."""
    if config.arch == "lstm":
        return None, ["an LSTM (arch lstm) has no transformers equivalent"]
    if config.arch == "bert":
        family = FAMILIES["bert"]
    elif config.positions == "learned" or config.norm == "layer":
        family = FAMILIES["gpt2"]
    else:
        family = FAMILIES["llama"]
    problems = family.export_problems(config)
    return (None if problems else family), problems
