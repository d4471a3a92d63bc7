"""`lmkit import` against transformers itself: each family's logits, tokenizer ids, the round trip through
export, every stage on an imported model, and bad input refused with nothing written."""

import json
import shutil
import types

import pytest
import torch
from safetensors.torch import load_file

from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.interop import import_stage
from lmkit.interop.import_config import ImportConfig
from lmkit.tokenizer import HFTokenizer, Tokenizer
from tests.conftest import invoke_lmkit
from tests.interop.hf_models import FAMILIES, make_hf_model, sentencepiece_dir
from tests.interop.test_hf_export import export

transformers = pytest.importorskip("transformers")

PROBE = "Emoji 🙂🚀, CJK 漢字かな, runs   of    spaces\tand\ttabs\n\nnew lines, digits 12345."


def import_dir(source, out, **overrides):
    return import_stage.run(resolve(ImportConfig, {}, {"source": str(source), "out": str(out), **overrides}))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {family: make_hf_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def imported(hf_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    return {family: import_dir(source, root / family).path for family, source in hf_dirs.items()}


def _padded_batch(vocab_size: int, pad: int):
    generator = torch.Generator().manual_seed(3)
    idx = torch.randint(0, vocab_size, (3, 20), generator=generator)
    mask = torch.ones(3, 20, dtype=torch.bool)
    for row, length in enumerate((20, 13, 5)):
        idx[row, length:], mask[row, length:] = pad, False
    return idx, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_logits_equal_transformers(family, hf_dirs, imported):
    checkpoint = read_checkpoint(imported[family])
    stats = checkpoint.artifact.stats
    assert stats["family"] == ("llama" if family in ("qwen2", "qwen3", "mistral") else family)
    assert stats["max_abs_logit_difference"] <= 1e-4 and not stats["resumable"]
    ours = checkpoint.inference_model()
    auto = transformers.AutoModelForMaskedLM if family == "bert" else transformers.AutoModelForCausalLM
    theirs = auto.from_pretrained(hf_dirs[family], dtype=torch.float32).eval()
    idx, mask = _padded_batch(checkpoint.model_config.vocab_size, checkpoint.specials.pad)
    with torch.no_grad():
        expected = theirs(input_ids=idx, attention_mask=mask.long()).logits
        got = ours(idx, attention_mask=mask)[0] if family == "bert" else ours(idx)[0]
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    config = checkpoint.model_config
    if family in ("llama", "qwen2", "qwen3", "mistral"):
        assert config.kv_heads == 2 < config.n_head  # grouped-query attention
    if family == "qwen3":
        assert (config.head_dim, config.qk_norm) == (16, True)
    if family == "qwen2":
        assert config.qkv_bias and config.vocab_size == checkpoint.artifact.stats["vocab_size"]


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
def test_imported_tokenizer_ids_equal_transformers(family, hf_dirs, imported):
    ours = Tokenizer.from_artifact(read_checkpoint(imported[family]).tokenizer_path)
    assert isinstance(ours, HFTokenizer)
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dirs[family])
    assert ours.encode(PROBE) == theirs(PROBE, add_special_tokens=False)["input_ids"]
    specials = ours.specials
    assert specials.eos == (theirs.sep_token_id if family == "bert" else theirs.eos_token_id)
    if family == "bert":
        assert (specials.cls, specials.sep, specials.mask, specials.pad) == (
            theirs.cls_token_id, theirs.sep_token_id, theirs.mask_token_id, theirs.pad_token_id)
    if family == "gpt2":  # GPT-2 has one special token, <|endoftext|>: it ends, starts and pads texts
        assert specials.eos == specials.pad == specials.start == theirs.convert_tokens_to_ids("<|endoftext|>")


def test_sentencepiece_only_tokenizer_imports(tmp_path):
    """A tokenizer.model without tokenizer.json (transformers converts it), imported as a tokenizer artifact."""
    source = sentencepiece_dir(tmp_path / "sp")
    artifact = import_dir(source, tmp_path / "tok")
    assert artifact.manifest["kind"] == "tokenizer" and (artifact.path / "tokenizer.json").is_file()
    ours = Tokenizer.from_artifact(artifact.path)
    theirs = transformers.AutoTokenizer.from_pretrained(source)
    assert ours.encode(PROBE) == theirs(PROBE, add_special_tokens=False)["input_ids"]
    assert ours.specials.start == theirs.bos_token_id == 1  # Llama starts a text with <s>


@pytest.mark.parametrize("family", FAMILIES)
def test_import_then_export_round_trips(family, hf_dirs, imported, tmp_path):
    exported = export(imported[family], tmp_path / "hf")
    source = load_file(str(hf_dirs[family] / "model.safetensors"))
    written = load_file(str(exported.path / "model.safetensors"))
    assert written, "nothing exported"
    for name, tensor in written.items():
        assert torch.equal(tensor, source[name]), name  # the same tensors
    config = json.loads((exported.path / "config.json").read_text())
    assert config["architectures"] == json.loads((hf_dirs[family] / "config.json").read_text())["architectures"]


def _labeled(tmp_path):
    rows = []
    for i in range(90):
        label = ("code", "prose", "numbers")[i % 3]
        text = {"code": f"def f{i}(x): return x + {i}", "prose": f"The quick brown fox number {i} naps today",
                "numbers": f"{i} {i * 7} {i * 13} {i % 5}"}[label]
        rows.append(json.dumps({"text": text, "label": label}))
    path = tmp_path / "labeled.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_finetune_classify_on_an_imported_model_runs_resumes_and_exports(family, imported, tmp_path):
    checkpoint = imported[family]
    data = tmp_path / "data"
    invoke_lmkit("preprocess", str(_labeled(tmp_path)), "--out", str(data), "--tokenizer", f"{checkpoint}/tokenizer",
                 "--label-field", "label", "--val-fraction", "0.2", "--workers", "1", check=True)
    common = ["finetune", str(checkpoint), str(data), "--out", str(tmp_path / "run"), "--micro-batch", "4",
              "--eval-every", "2", "--checkpoint-every", "2", "--precision", "fp32"]
    invoke_lmkit(*common, "--max-steps", "2", check=True)
    resumed = invoke_lmkit(*common, "--max-steps", "4", "--resume", check=True)
    assert "resum" in (resumed.stdout + resumed.stderr).lower()
    final = read_checkpoint(tmp_path / "run" / "final")
    assert final.artifact.stats["step"] == 4 and final.task == "classify"
    exported = export(final.path, tmp_path / "hf")  # transformers agrees on the finetuned classifier
    assert exported.stats["architecture"] == ("GPT2" if family == "gpt2" else "Bert") + "ForSequenceClassification"
    report = invoke_lmkit("evaluate", str(final.path), str(data), "--split", "validation", check=True)
    assert "accuracy" in report.stdout
    # Distillation both ways round: the imported model's classifier teaches a new classic student.
    student = ("gpt2-tiny" if family == "gpt2" else "bert-tiny")
    invoke_lmkit("finetune", str(checkpoint), str(data), "--out", str(tmp_path / "student"), "--model", student,
                 "--teacher", str(final.path), "--seq-len", "64", "--micro-batch", "4", "--max-steps", "2",
                 "--precision", "fp32", check=True)
    if family == "bert":  # and masked-LM training goes on with the imported tokenizer's [MASK]
        invoke_lmkit("finetune", str(checkpoint), str(data), "--task", "mlm", "--out", str(tmp_path / "mlm"),
                     "--seq-len", "32", "--micro-batch", "4", "--max-steps", "2", "--precision", "fp32", check=True)


@pytest.mark.slow
def test_sft_with_lora_on_an_imported_llama_generates(imported, tmp_path):
    records = tmp_path / "sft.jsonl"
    records.write_text("\n".join(json.dumps({"prompt": f"Count to {i}", "response": " ".join(map(str, range(i)))})
                                 for i in range(2, 30)) + "\n")
    common = ["finetune", str(imported["llama"]), str(records), "--out", str(tmp_path / "run"), "--micro-batch", "4",
              "--lora-rank", "2", "--checkpoint-every", "2", "--eval-every", "0", "--precision", "fp32"]
    invoke_lmkit(*common, "--max-steps", "2", check=True)
    invoke_lmkit(*common, "--max-steps", "3", "--resume", check=True)
    assert read_checkpoint(tmp_path / "run" / "final").artifact.stats["step"] == 3
    generated = invoke_lmkit("generate", str(tmp_path / "run" / "final"), "Count to 3", "--max-new-tokens", "4",
                             check=True)
    assert generated.stdout.strip()


# -- bad input: one line, exit 1, nothing written ------------------------------------------------------

def _copy(source, tmp_path):
    target = tmp_path / "src"
    shutil.copytree(source, target)
    return target


def _edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("case,message", [
    ("unsupported", "T5ForConditionalGeneration (model_type 't5') is not supported; lmkit imports LlamaForCausalLM"),
    ("mismatch", "config.json and the weights do not match: the weights lack transformer.h.2."),
    ("truncated", "model.safetensors: truncated or not a safetensors file"),
    ("pickle", "pytorch_model.bin: pickled weights are refused (lmkit loads no pickle)"),
    ("vocabulary", "the tokenizer has 500 tokens but the model only 490 embedding rows"),
    ("rope-scaling", "rope scaling 'yarn' is not supported"),
    ("wrong-type", "config.json: a setting has the wrong type"),
    ("broken-tokenizer", "transformers cannot read its tokenizer"),
    ("no-eos", "src: the tokenizer has no end-of-text token (eos_token, or sep_token for an encoder); lmkit "
               "separates documents with it"),
    ("slow-tokenizer", "src: the tokenizer has no fast (tokenizers) form; lmkit imports fast tokenizers and "
                       "SentencePiece models transformers converts"),
    ("pickled-list", "pytorch_model.bin: holds no state dict of tensors"),
    ("unstackable", "do not stack"),
])
def test_bad_input_is_refused_with_nothing_written(case, message, hf_dirs, tmp_path, monkeypatch):
    source = _copy(hf_dirs["llama" if case in ("rope-scaling", "unstackable") else "gpt2"], tmp_path)
    if case == "unsupported":
        _edit_config(source, model_type="t5", architectures=["T5ForConditionalGeneration"])
    elif case == "mismatch":
        _edit_config(source, n_layer=3)
    elif case == "truncated":
        weights = source / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "pickle":
        torch.save(load_file(str(source / "model.safetensors")), source / "pytorch_model.bin")
        (source / "model.safetensors").unlink()
    elif case == "vocabulary":
        shutil.rmtree(source)
        make_hf_model("gpt2", source, vocab_size=490)
    elif case == "pickled-list":
        torch.save([1, 2, 3], source / "pytorch_model.bin")
        (source / "model.safetensors").unlink()
    elif case == "unstackable":  # a Llama whose k_proj has one input column too many
        from safetensors.torch import save_file

        tensors = load_file(str(source / "model.safetensors"))
        name = "model.layers.0.self_attn.k_proj.weight"
        tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)
        save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
    elif case == "wrong-type":
        _edit_config(source, n_positions=None)
    elif case == "broken-tokenizer":
        (source / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    elif case == "no-eos":  # a bare tokenizers tokenizer naming no special token: none to end a text with
        tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
        for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token"):
            tokenizer_config.pop(name, None)
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (source / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    elif case == "slow-tokenizer":  # what transformers returns for a tokenizer it has no tokenizers form of
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                            lambda *args, **kwargs: types.SimpleNamespace(backend_tokenizer=None))
    elif case == "rope-scaling":
        _edit_config(source, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0})
    trust = ["--trust-pickle"] if case == "pickled-list" else []  # read, then refused for what it holds
    result = invoke_lmkit("import", str(source), "--out", str(tmp_path / "out"), *trust)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    if case == "pickle":  # the opt-in reads them without running code (weights_only)
        artifact = import_dir(source, tmp_path / "out", trust_pickle=True)
        assert artifact.stats["max_abs_logit_difference"] <= 1e-4


def test_a_vocabulary_past_65536_tokens_gives_uint32_shards(tmp_path):
    """An imported tokenizer of 70,000 words: preprocess writes uint32 shards and reads the high ids back."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    from lmkit.data.shards import read_split, token_lists

    words = {"[UNK]": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    backend = Backend(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>") \
        .save_pretrained(tmp_path / "hf")
    tokenizer = import_dir(tmp_path / "hf", tmp_path / "tok")
    assert tokenizer.stats["vocab_size"] == 70_002
    (tmp_path / "text.txt").write_text("\n\n".join(f"w1 w{60_000 + i} w69999 w5 w7 w9 w11 w13" for i in range(40)))
    invoke_lmkit("preprocess", str(tmp_path / "text.txt"), "--out", str(tmp_path / "data"), "--tokenizer",
                 str(tmp_path / "tok"), "--workers", "1", "--filters", "none", "--no-near-dedup", check=True)
    from lmkit import artifacts

    dataset = artifacts.load(tmp_path / "data", kind="dataset")
    assert dataset.stats["token_type"] == "uint32"
    ids = set()
    for table in read_split(dataset, "train").tables():
        ids.update(token_lists(table.column("tokens"))[1].tolist())
    assert 70_001 in ids and max(ids) > 65_535


def test_a_bare_bert_model_imports_with_its_pooler_and_a_new_mlm_head(hf_dirs, tmp_path):
    """BertModel (no MLM head): the encoder and pooler are imported and checked on hidden states; the MLM
    head starts fresh, said so in the stats; a classifier reads the imported pooler."""
    bare = tmp_path / "bare"
    shutil.copytree(hf_dirs["bert"], bare)
    body = transformers.BertModel.from_pretrained(hf_dirs["bert"], dtype=torch.float32)  # adds a pooler
    body.save_pretrained(bare)
    checkpoint = read_checkpoint(import_dir(bare, tmp_path / "ckpt").path)
    assert checkpoint.model_config.pooler and "mlm_head.dense.weight" in checkpoint.artifact.stats["initialized"]
    model = checkpoint.inference_model()
    assert torch.equal(model.pooler.weight, body.pooler.dense.weight)


@pytest.mark.parametrize("family", ["gpt2", "bert", "qwen3"])
def test_attention_maps_of_imported_models(family, imported):
    """inspect attention recomputes each layer's attention (learned positions, grouped queries, qk-norm) and
    checks it against the model's own output."""
    from lmkit.interpret.attention import attention_maps

    checkpoint = read_checkpoint(imported[family])
    maps = attention_maps(checkpoint, checkpoint.inference_model(), "the quick brown fox")
    assert maps.weights.shape[0] == checkpoint.model_config.n_layer
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones_like(maps.weights.sum(-1)))


def test_sharded_safetensors_import(hf_dirs, imported, tmp_path):
    """model.safetensors.index.json and its shards: the same checkpoint weights as the single file."""
    sharded = tmp_path / "sharded"
    shutil.copytree(hf_dirs["llama"], sharded)
    (sharded / "model.safetensors").unlink()
    transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["llama"]).save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("model-*.safetensors"))) > 1
    ours = read_checkpoint(import_dir(sharded, tmp_path / "ckpt").path).build_model().state_dict()
    single = read_checkpoint(imported["llama"]).build_model().state_dict()
    assert ours.keys() == single.keys() and all(torch.equal(ours[k], single[k]) for k in ours)


@pytest.mark.parametrize("scaling,ours", [
    ({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16}, {"rope_scaling": "llama3", "rope_original_length": 16}),
    ({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, {"rope_scaling": "linear", "rope_factor": 4.0}),
], ids=["llama3", "linear"])
def test_rope_scaling_imports_and_round_trips(tmp_path, scaling, ours):
    """Llama 3.1's scaled RoPE (rope_type llama3) and position interpolation (linear, what finetune --block-size
    writes), on sequences past the original length: logits equal transformers', and the export writes the same
    rope_parameters back."""
    source = make_hf_model("llama", tmp_path / "hf", rope_parameters=scaling)
    checkpoint = read_checkpoint(import_dir(source, tmp_path / "ckpt").path)
    assert {key: getattr(checkpoint.model_config, key) for key in ours} == ours
    theirs = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    idx = torch.randint(0, checkpoint.model_config.vocab_size, (2, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(checkpoint.inference_model()(idx)[0], theirs(input_ids=idx).logits,
                                   atol=1e-5, rtol=0)
    written = json.loads((export(checkpoint.path, tmp_path / "out").path / "config.json").read_text())
    assert {key: written["rope_parameters"][key] for key in scaling} == scaling


def test_an_original_bert_file_with_gamma_beta_names_and_the_nsp_head_imports(hf_dirs, imported, tmp_path):
    """The first BERT checkpoints name LayerNorm parameters gamma/beta and carry the next-sentence head."""
    from safetensors.torch import save_file

    source = _copy(hf_dirs["bert"], tmp_path)
    tensors = load_file(str(source / "model.safetensors"))
    renamed = {name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): t
               for name, t in tensors.items()}
    renamed["cls.seq_relationship.weight"], renamed["cls.seq_relationship.bias"] = torch.zeros(2, 32), torch.zeros(2)
    save_file(renamed, str(source / "model.safetensors"), metadata={"format": "pt"})
    ours = read_checkpoint(import_dir(source, tmp_path / "ckpt", check=False).path).build_model().state_dict()
    reference = read_checkpoint(imported["bert"]).build_model().state_dict()
    assert all(torch.equal(ours[name], reference[name]) for name in reference)


def test_an_untied_bert_decoder_is_imported(tmp_path):
    """BertForMaskedLM with tie_word_embeddings false: its own decoder matrix, not the embeddings."""
    source = make_hf_model("bert", tmp_path / "hf", tie_word_embeddings=False)
    checkpoint = read_checkpoint(import_dir(source, tmp_path / "ckpt").path)  # the import's own check passes too
    assert not checkpoint.model_config.tie_embeddings
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(source, dtype=torch.float32).eval()
    ours = checkpoint.inference_model()
    assert not torch.equal(ours.lm_head.weight, ours.tok_emb.weight)
    idx = torch.randint(0, checkpoint.model_config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], theirs(input_ids=idx).logits, atol=1e-5, rtol=0)


def test_info_names_an_imported_checkpoints_family(imported):
    shown = invoke_lmkit("info", str(imported["gpt2"]), check=True).stdout
    assert "GPT-2 (LayerNorm, learned positions, GELU, biases)" in " ".join(shown.split())
