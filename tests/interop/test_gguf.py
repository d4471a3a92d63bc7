"""GGUF exports read back with the gguf package's own reader: every tensor (llama's query/key permutation undone)
against the checkpoint, the hyperparameters, the vocabulary, the framing and the chat template; the permutation
against llama.cpp's rotary convention; the refusals; and, where llama-cpp-python is installed, greedy decoding in
llama.cpp itself (slow)."""

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.data.chat_template import DEFAULT_TEMPLATE, ChatFormat, render
from lmkit.errors import UserError
from lmkit.interop import export_stage as stage
from lmkit.interop import gguf_export
from lmkit.interop.export_config import ExportConfig
from lmkit.interop.hf_export import exported_template
from lmkit.models.layers import apply_rotary, rope_tables
from lmkit.tokenizer import load as load_tokenizer
from tests.conftest import invoke_lmkit, train_tiny
from tests.interop.conftest import write_finetuned

gguf = pytest.importorskip("gguf")


def export(checkpoint, out, **overrides):
    return stage.run(resolve(ExportConfig, {}, {"checkpoint": str(checkpoint), "out": str(out), "format": "gguf",
                                                **overrides}))


def read(exported):
    """(metadata without GGUF's own header fields, {name: (float32 array in torch's layout, GGML type)})."""
    reader = gguf.GGUFReader(str(exported.path / "model.gguf"))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {}
    for tensor in reader.tensors:
        shape = tuple(reversed([int(n) for n in tensor.shape]))  # GGUF lists dimensions innermost first
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        tensors[tensor.name] = (np.array(values, dtype=np.float32), tensor.tensor_type)
    return fields, tensors


def interleaved_to_half(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from llama.cpp's adjacent pairs (2i, 2i+1) back to rotate-half order (i, i + d/2)."""
    rows = weight.shape[0] // heads
    return weight.reshape(heads, rows // 2, 2, -1).transpose(1, 2).reshape(weight.shape)


def lmkit_weights(checkpoint) -> dict[str, torch.Tensor]:
    return {name: tensor.detach() for name, tensor in checkpoint.inference_model().state_dict().items()}


def as_tensor(entry) -> torch.Tensor:
    return torch.from_numpy(entry[0])


# -- lmkit's modern GPT: llama ------------------------------------------------------------------------

def test_llama_style_gpt_holds_every_tensor_and_hyperparameter(gpt, tmp_path):
    exported = export(gpt, tmp_path / "gguf", gguf_type="f32")
    assert {p.name for p in exported.path.iterdir()} == {"model.gguf", "manifest.json"}
    checkpoint = read_checkpoint(gpt)
    config = checkpoint.model_config
    fields, tensors = read(exported)
    assert fields["general.architecture"] == "llama" and fields["general.file_type"] == 0
    expected = {"context_length": config.block_size, "embedding_length": config.d_model,
                "block_count": config.n_layer, "feed_forward_length": config.ffn_dim,
                "attention.head_count": config.n_head, "attention.head_count_kv": config.kv_heads,
                "rope.dimension_count": config.head_dim, "vocab_size": config.vocab_size}
    assert {key: fields[f"llama.{key}"] for key in expected} == expected
    assert fields["llama.rope.freq_base"] == config.rope_theta
    assert math.isclose(fields["llama.attention.layer_norm_rms_epsilon"], config.norm_eps, rel_tol=1e-6)
    assert fields["lmkit.source_checkpoint"] == checkpoint.artifact.id

    ours = lmkit_weights(checkpoint)
    hd, q_rows, kv_rows = config.head_dim, config.n_head * config.head_dim, config.kv_heads * config.head_dim
    expected_names = {"token_embd.weight", "output_norm.weight"}
    assert torch.equal(as_tensor(tensors["token_embd.weight"]), ours["tok_emb.weight"])
    assert torch.equal(as_tensor(tensors["output_norm.weight"]), ours["final_norm.weight"])
    for i in range(config.n_layer):
        q, k, v = ours[f"blocks.{i}.attn.qkv.weight"].split([q_rows, kv_rows, kv_rows])
        pairs = {"attn_norm": ours[f"blocks.{i}.attn_norm.weight"], "attn_v": v,
                 "attn_output": ours[f"blocks.{i}.attn.out_proj.weight"],
                 "ffn_norm": ours[f"blocks.{i}.mlp_norm.weight"], "ffn_gate": ours[f"blocks.{i}.mlp.gate.weight"],
                 "ffn_up": ours[f"blocks.{i}.mlp.up.weight"], "ffn_down": ours[f"blocks.{i}.mlp.down.weight"]}
        for name, tensor in pairs.items():
            assert torch.equal(as_tensor(tensors[f"blk.{i}.{name}.weight"]), tensor), name
        written_q = as_tensor(tensors[f"blk.{i}.attn_q.weight"])
        written_k = as_tensor(tensors[f"blk.{i}.attn_k.weight"])
        assert not torch.equal(written_q, q) and hd > 2  # permuted: llama.cpp's llama rotates adjacent pairs
        assert torch.equal(interleaved_to_half(written_q, config.n_head), q)
        assert torch.equal(interleaved_to_half(written_k, config.kv_heads), k)
        expected_names |= {f"blk.{i}.{name}.weight" for name in [*pairs, "attn_q", "attn_k"]}
    assert set(tensors) == expected_names  # tied: no output.weight, llama.cpp reuses token_embd
    assert all(kind == gguf.GGMLQuantizationType.F32 for _values, kind in tensors.values())
    assert exported.stats["max_abs_logit_difference"] == 0.0 and exported.stats["checked"]


def test_lmkit_tokenizer_and_framing(gpt, tmp_path):
    fields, _tensors = read(export(gpt, tmp_path / "gguf"))
    tokenizer = load_tokenizer(read_checkpoint(gpt).tokenizer_path)
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.tokens"] == [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    assert fields["tokenizer.ggml.scores"] == pytest.approx([tokenizer.sp.get_score(i)
                                                             for i in range(tokenizer.vocab_size)])
    types = fields["tokenizer.ggml.token_type"]
    assert types[:7] == [3, 2, 3, 3, 3, 3, 3]  # <pad> control, <unk> unknown, <s> </s> [MASK] [CLS] [SEP] control
    assert types[tokenizer.sp.piece_to_id("<0x0A>")] == 6 and types.count(1) > 100  # bytes; normal pieces
    # lmkit's generate reads a prompt after </s> (id 3): llama.cpp adds it as its "BOS", and the dummy prefix
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.add_bos_token"]) == (3, True)
    assert (fields["tokenizer.ggml.eos_token_id"], fields["tokenizer.ggml.padding_token_id"],
            fields["tokenizer.ggml.unknown_token_id"]) == (3, 0, 1)
    assert fields["tokenizer.ggml.add_space_prefix"] is True and "tokenizer.chat_template" not in fields


def test_sft_model_keeps_its_template_and_adds_nothing_before_it(gpt, tmp_path):
    source = write_finetuned(gpt, tmp_path / "sft", template="### Q:\n{prompt}\n### A:\n")
    fields, _tensors = read(export(source, tmp_path / "gguf"))
    assert fields["lmkit.prompt_template"] == "### Q:\n{prompt}\n### A:\n" and fields["lmkit.objective"] == "sft"
    assert fields["tokenizer.ggml.add_bos_token"] is False  # lmkit encodes the rendered template alone


@pytest.mark.parametrize("gguf_type,qtype,tolerance", [("f16", "F16", 1e-3), ("bf16", "BF16", 8e-3),
                                                       ("q8_0", "Q8_0", 1.2e-2)])
def test_types_round_2d_weights_and_keep_norms_f32(gpt, tmp_path, gguf_type, qtype, tolerance):
    exported = export(gpt, tmp_path / "gguf", gguf_type=gguf_type)
    fields, tensors = read(exported)
    assert fields["general.file_type"] == gguf_export.file_type(gguf_type, gguf)
    ours = lmkit_weights(read_checkpoint(gpt))
    kinds = {name: kind.name for name, (_values, kind) in tensors.items()}
    assert kinds["token_embd.weight"] == kinds["blk.0.ffn_down.weight"] == kinds["blk.1.attn_q.weight"] == qtype
    assert kinds["output_norm.weight"] == kinds["blk.0.attn_norm.weight"] == "F32"
    written, original = as_tensor(tensors["blk.0.ffn_up.weight"]), ours["blocks.0.mlp.up.weight"]
    error = (written - original).abs().max().item()
    assert 0 < error <= tolerance * original.abs().max().item()  # rounded, within the type's precision
    assert 0 < exported.stats["max_abs_logit_difference"] < 0.1
    assert exported.path.joinpath("model.gguf").stat().st_size < export(gpt, tmp_path / "f32", gguf_type="f32").path \
        .joinpath("model.gguf").stat().st_size


def test_the_permutation_is_llama_cpps_rotary_convention():
    """Attention scores of lmkit's rotate-half RoPE on q, k equal those of llama.cpp's llama RoPE (adjacent pairs
    rotated, ggml's ROPE_TYPE_NORM) on the permuted projections: the export's permutation is the one llama.cpp needs."""
    torch.manual_seed(0)
    heads, hd, d_model, length = 3, 8, 12, 7
    wq, wk, x = torch.randn(heads * hd, d_model), torch.randn(heads * hd, d_model), torch.randn(length, d_model)
    cos, sin = rope_tables(hd, length, 10000.0)  # (T, hd/2)

    def half(w):  # lmkit: (1, heads, T, hd)
        return apply_rotary((x @ w.T).view(length, heads, hd).transpose(0, 1)[None], cos, sin)[0]

    def adjacent(w):  # llama.cpp: pairs (2i, 2i + 1) rotated by position * theta^(-2i/hd)
        y = (x @ w.T).view(length, heads, hd // 2, 2)
        even, odd = y[..., 0], y[..., 1]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).view(length, heads, hd).transpose(0, 1)

    ours = half(wq) @ half(wk).transpose(-1, -2)
    theirs = adjacent(gguf_export.permute(wq, heads)) @ adjacent(gguf_export.permute(wk, heads)).transpose(-1, -2)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    unpermuted = adjacent(wq) @ adjacent(wk).transpose(-1, -2)
    assert not torch.allclose(unpermuted, ours, atol=1e-2)  # the positive control: without it the scores differ
    assert torch.equal(gguf_export.unpermute(gguf_export.permute(wq, heads), heads), wq)


# -- GPT-2 ----------------------------------------------------------------------------------------------

def test_gpt2_is_written_untransposed_with_its_positions(dataset, tmp_path):
    source = train_tiny(dataset, tmp_path / "run", model="gpt2-tiny").path
    exported = export(source, tmp_path / "gguf", gguf_type="f32")
    fields, tensors = read(exported)
    config = read_checkpoint(source).model_config
    assert fields["general.architecture"] == "gpt2" and fields["gpt2.context_length"] == config.block_size
    assert math.isclose(fields["gpt2.attention.layer_norm_epsilon"], config.norm_eps, rel_tol=1e-6)
    ours = lmkit_weights(read_checkpoint(source))
    pairs = {"token_embd.weight": "tok_emb.weight", "position_embd.weight": "embeddings.pos_emb.weight",
             "output_norm.bias": "final_norm.bias"}
    for i in range(config.n_layer):
        for theirs, mine in (("attn_qkv", "attn.qkv"), ("attn_output", "attn.out_proj"), ("ffn_up", "mlp.up"),
                             ("ffn_down", "mlp.down"), ("attn_norm", "attn_norm"), ("ffn_norm", "mlp_norm")):
            pairs.update({f"blk.{i}.{theirs}.{p}": f"blocks.{i}.{mine}.{p}" for p in ("weight", "bias")})
    for theirs, mine in pairs.items():
        assert torch.equal(as_tensor(tensors[theirs]), ours[mine]), theirs  # nn.Linear's (out, in): no Conv1D
    assert "output.weight" not in tensors and len(tensors) == len(pairs) + 1  # + output_norm.weight
    assert exported.stats["max_abs_logit_difference"] == 0.0


# -- imported models -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    pytest.importorskip("transformers")
    from lmkit.interop import import_stage
    from lmkit.interop.import_config import ImportConfig
    from tests.interop.hf_models import make_chat_model, make_hf_model

    root = tmp_path_factory.mktemp("gguf-imported")
    sources = {family: make_hf_model(family, root / f"hf-{family}") for family in ("llama", "qwen2", "qwen3", "gpt2")}
    sources["chat"] = make_chat_model("qwen2", root / "hf-chat")
    sources["llama3-scaled"] = make_hf_model("llama", root / "hf-llama3", rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})
    return {name: import_stage.run(resolve(ImportConfig, {}, {"source": str(source), "out": str(root / name)})).path
            for name, source in sources.items()}


def test_llama3_rope_scaling_travels_as_rope_freqs(imported, tmp_path):
    fields, tensors = read(export(imported["llama3-scaled"], tmp_path / "gguf"))
    config = read_checkpoint(imported["llama3-scaled"]).model_config
    assert config.rope_scaling == "llama3"
    factors = as_tensor(tensors["rope_freqs.weight"])  # llama.cpp divides each frequency by its factor
    base = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim)
    cos, sin = rope_tables(config.head_dim, 2, config.rope_theta, config)
    scaled = torch.atan2(sin[1], cos[1])  # lmkit's angle at position 1: its scaled frequencies
    torch.testing.assert_close(base / factors, scaled)
    assert factors.max().item() == pytest.approx(4.0) and tensors["rope_freqs.weight"][1].name == "F32"


def test_imported_sentencepiece_style_llama(imported, tmp_path):
    exported = export(imported["llama"], tmp_path / "gguf")
    fields, _tensors = read(exported)
    checkpoint = read_checkpoint(imported["llama"])
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.tokens"] == [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    saved = json.loads((checkpoint.tokenizer_path / "tokenizer.json").read_text())
    merges = [" ".join(m) if isinstance(m, list) else m for m in saved["model"]["merges"]]
    scores = fields["tokenizer.ggml.scores"]
    for rank in (0, 1, len(merges) // 2, len(merges) - 1):  # a merged piece scores minus its merge's rank
        left, right = merges[rank].split(" ")
        token_id = tokenizer.backend.token_to_id(left + right)
        assert scores[token_id] == -rank or any(m.replace(" ", "") == left + right for m in merges[:rank])
    types = fields["tokenizer.ggml.token_type"]
    assert types[tokenizer.backend.token_to_id("<0x41>")] == 6 and types[0] == 3  # byte piece; <unk>, special
    # lmkit frames an imported prompt as its tokenizer does: this one adds nothing
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.eos_token_id"] == 2


def test_imported_qwen3_and_qwen2_keep_rotate_half_and_their_extras(imported, tmp_path):
    fields, tensors = read(export(imported["qwen3"], tmp_path / "qwen3", gguf_type="f32"))
    checkpoint = read_checkpoint(imported["qwen3"])
    config, ours = checkpoint.model_config, lmkit_weights(checkpoint)
    assert fields["general.architecture"] == "qwen3" and fields["qwen3.attention.key_length"] == config.head_dim == 16
    q_rows = config.n_head * config.head_dim
    assert torch.equal(as_tensor(tensors["blk.0.attn_q.weight"]), ours["blocks.0.attn.qkv.weight"][:q_rows])
    assert torch.equal(as_tensor(tensors["blk.1.attn_k_norm.weight"]), ours["blocks.1.attn.k_norm.weight"])

    fields, tensors = read(export(imported["qwen2"], tmp_path / "qwen2", gguf_type="f32"))
    checkpoint = read_checkpoint(imported["qwen2"])
    config, ours = checkpoint.model_config, lmkit_weights(checkpoint)
    q_rows, kv_rows = config.n_head * config.head_dim, config.kv_heads * config.head_dim
    assert fields["general.architecture"] == "qwen2"
    assert torch.equal(as_tensor(tensors["blk.0.attn_k.bias"]), ours["blocks.0.attn.qkv.bias"][q_rows:][:kv_rows])
    size = load_tokenizer(checkpoint.tokenizer_path).vocab_size
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == config.vocab_size > size  # Qwen's padded embedding rows, named and unused
    assert tokens[size:] == [f"[PAD{i}]" for i in range(size, config.vocab_size)] and set(types[size:]) == {5}


def test_imported_byte_level_gpt2(imported, tmp_path):
    fields, _tensors = read(export(imported["gpt2"], tmp_path / "gguf"))
    checkpoint = read_checkpoint(imported["gpt2"])
    saved = json.loads((checkpoint.tokenizer_path / "tokenizer.json").read_text())
    merges = [" ".join(m) if isinstance(m, list) else m for m in saved["model"]["merges"]]
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert fields["tokenizer.ggml.merges"] == merges
    end = saved["model"]["vocab"]["<|endoftext|>"]
    assert fields["tokenizer.ggml.tokens"][end] == "<|endoftext|>" and fields["tokenizer.ggml.token_type"][end] == 3
    assert fields["tokenizer.ggml.add_bos_token"] is False  # GPT-2's tokenizer adds nothing; lmkit neither


def test_imported_chat_model_carries_its_template_and_end_of_turn(imported, tmp_path):
    fields, _tensors = read(export(imported["chat"], tmp_path / "gguf"))
    checkpoint = read_checkpoint(imported["chat"])
    assert fields["tokenizer.chat_template"] == exported_template(checkpoint.chat)
    assert fields["tokenizer.ggml.eot_token_id"] == checkpoint.chat.end_of_turn
    assert fields["tokenizer.ggml.add_bos_token"] is False  # the rendering is the whole input, as in lmkit


def test_lmkits_chat_template_loses_only_its_generation_markers():
    chat = ChatFormat(DEFAULT_TEMPLATE, {}, "Be brief.", 0)
    template = gguf_export.gguf_chat_template(SimpleNamespace(chat=chat))
    assert "{% generation %}" in DEFAULT_TEMPLATE and "generation %}" not in template
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "And?"}]
    for prompt in (True, False):  # rendered as transformers (and llama.cpp's Jinja) would: the same text
        assert render(ChatFormat(template), messages, prompt, "x") == render(chat, chat.with_system(messages), prompt,
                                                                              "x")


# -- refusals and the artifact ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "lstm", "classifier"])
def test_non_decoders_are_refused_naming_the_flag(kind, bert, lstm, gpt, tmp_path):
    source = {"bert": bert, "lstm": lstm}.get(kind) or write_finetuned(gpt, tmp_path / "clf", labels=["a", "b"])
    out = tmp_path / "gguf"
    result = invoke_lmkit("export", str(source), "--format", "gguf", "--out", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--format gguf writes decoder language models" in result.stderr and "llama.cpp" in result.stderr
    assert {"bert": "BERT", "lstm": "LSTM", "classifier": "a classifier"}[kind] in result.stderr
    assert not out.exists()


def test_exact_gelu_gpt2_is_refused(dataset, tmp_path):
    source = train_tiny(dataset, tmp_path / "run", model="gpt2-tiny", mlp="gelu").path
    result = invoke_lmkit("export", str(source), "--format", "gguf", "--out", str(tmp_path / "gguf"))
    assert result.returncode == 1 and "--mlp gelu" in result.stderr and "gelu_tanh" in result.stderr
    assert not (tmp_path / "gguf").exists()


def test_bad_types_are_refused(gpt, tmp_path):
    result = invoke_lmkit("export", str(gpt), "--format", "gguf", "--gguf-type", "q4_k", "--out", str(tmp_path / "a"))
    assert result.returncode == 1 and "--gguf-type: 'q4_k' is not one of f32, f16, bf16, q8_0" in result.stderr
    result = invoke_lmkit("export", str(gpt), "--gguf-type", "q8_0", "--out", str(tmp_path / "b"))
    assert result.returncode == 1 and "--gguf-type: only applies to --format gguf (got --format hf)" in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_gguf_names_the_extra(gpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    result = invoke_lmkit("export", str(gpt), "--format", "gguf", "--out", str(tmp_path / "gguf"))
    assert result.returncode == 1
    assert "lmkit export --format gguf needs the gguf package: pip install 'lmkit[gguf]'" in result.stderr


def test_the_export_is_an_artifact_and_a_failure_leaves_nothing(gpt, tmp_path, monkeypatch):
    out = tmp_path / "gguf"
    result = invoke_lmkit("export", str(gpt), "--format", "gguf", "--out", str(out), check=True)
    assert "llama.cpp llama" in result.stdout and "id 3 before a prompt" in result.stdout
    first = artifacts.load(out, kind="export")
    assert artifacts.verify_tree(out)[1] == [] and first.parent_path("checkpoint") == gpt.resolve()
    assert export(gpt, out).up_to_date
    with pytest.raises(UserError, match="--force"):  # another type is another export: never silently replaced
        export(gpt, out, gguf_type="q8_0")
    assert artifacts.load(out, kind="export").id == first.id

    def broken(*args, **kwargs):
        raise RuntimeError("crash after the file was written")

    monkeypatch.setattr(gguf_export, "check_file", broken)
    with pytest.raises(RuntimeError, match="crash"):
        export(gpt, tmp_path / "crashed")
    assert not (tmp_path / "crashed").exists() and not list(tmp_path.glob(".crashed.tmp-*"))


# -- llama.cpp itself -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_llama_cpp_decodes_greedily_as_lmkit(gpt, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from lmkit.generation.generator import Generator
    from lmkit.generation.settings import SamplingSettings

    exported = export(gpt, tmp_path / "gguf", gguf_type="f32")
    generator = Generator(read_checkpoint(gpt))
    prompts = ["The for statement", "An object is", "x = 1"]
    expected = generator.generate_ids([generator.encode_prompt(p) for p in prompts], prompts,
                                      SamplingSettings(temperature=0.0, max_new_tokens=16), names=prompts)
    llm = llama_cpp.Llama(model_path=str(exported.path / "model.gguf"), n_ctx=128, logits_all=False, verbose=False)
    banned = list(generator.banned)
    try:
        for prompt, reply in zip(prompts, expected):
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
            assert ids == generator.encode_prompt(prompt)  # </s> first, the same pieces

            def ban(_ids, scores):
                scores[banned] = -np.inf
                return scores

            llm.reset()
            got = []
            for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0,
                                      logits_processor=llama_cpp.LogitsProcessorList([ban])):
                if token in generator.stop_ids:  # lmkit's ids end before the token that stopped them
                    break
                got.append(token)
                if len(got) == 16:
                    break
            assert got == reply.ids, prompt
    finally:
        llm.close()
