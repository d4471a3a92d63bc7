"""Exported checkpoints against transformers itself: logits, greedy generation, token ids, refusals."""

import json
import re
import sys

import pytest
import torch

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.data.framing import format_inputs
from lmkit.errors import UserError
from lmkit.interop import export_stage as stage
from lmkit.interop import hf_export as hf
from lmkit.interop.export_config import ExportConfig
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import LMKIT
from tests.conftest import paragraphs, train_tiny
from tests.interop.conftest import write_finetuned

transformers = pytest.importorskip("transformers")

EOS = 3
TEXTS = ["The for statement is used", "  two  spaces,\ttabs\nand lines", "digits 2024 ünïcödé 漢字", ""]


def export(checkpoint, out, **overrides):
    return stage.run(resolve(ExportConfig, {}, {"checkpoint": str(checkpoint), "out": str(out), **overrides}))


def lmkit_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by hand: the argmax of the last position, appended, until </s> or ``steps`` tokens."""
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0]  # (1, T, V)
        ids.append(int(logits[0, -1].argmax()))
        if ids[-1] == EOS:
            break
    return ids


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A GPT trained enough (30 steps) that its greedy continuations are not noise."""
    run = tmp_path_factory.mktemp("export") / "gpt"
    return train_tiny(dataset, run, max_steps=30, lr=1e-2, warmup_steps=3).path


@pytest.mark.parametrize("overrides,architecture", [
    ({}, "LlamaForCausalLM"),
    ({"qk_norm": True}, "Qwen3ForCausalLM"),  # Qwen3's per-head q/k RMSNorm is lmkit's qk_norm
], ids=["llama", "qk-norm-qwen3"])
def test_causal_lm_export_matches_lmkit(dataset, tmp_path, trained, overrides, architecture):
    source = trained if not overrides else train_tiny(dataset, tmp_path / "run", max_steps=30, lr=1e-2,
                                                        warmup_steps=3, **overrides).path
    exported = export(source, tmp_path / "hf")
    assert exported.stats["architecture"] == architecture and exported.stats["max_abs_logit_difference"] <= 1e-4
    files = {p.name for p in exported.path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.model", "tokenizer.json",
            "tokenizer_config.json", "lmkit_export.json", "manifest.json"} <= files
    assert json.loads((exported.path / "lmkit_export.json").read_text())["source_checkpoint"]["id"] == \
        read_checkpoint(source).artifact.id

    ours = read_checkpoint(source).build_model().eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported.path, dtype=torch.float32).eval()
    assert type(theirs).__name__ == architecture
    generator = torch.Generator().manual_seed(1)
    for length in (1, 17, 128):  # block_size is 128
        idx = torch.randint(7, ours.config.vocab_size, (2, length), generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(theirs(input_ids=idx).logits, ours(idx)[0], atol=1e-4, rtol=0)

    generation = json.loads((exported.path / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (2, 3, 0)
    tokenizer = Tokenizer.from_artifact(read_checkpoint(source).tokenizer_path)
    for text in ["The for statement", "An object is", "x"]:
        prompt = tokenizer.encode(text)
        expected = lmkit_greedy(ours, prompt, steps=24)
        with torch.no_grad():
            got = theirs.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  do_sample=False, max_new_tokens=24)[0].tolist()
        assert got == expected and len(got) > len(prompt) + 1


def test_exported_tokenizer_gives_lmkit_ids(trained, tmp_path):
    exported = export(trained, tmp_path / "hf")
    ours = Tokenizer.from_artifact(read_checkpoint(trained).tokenizer_path)
    theirs = transformers.AutoTokenizer.from_pretrained(exported.path)
    for text in TEXTS + paragraphs(100):
        assert theirs(text)["input_ids"] == ours.encode(text), text  # no <s> added, as in lmkit
        assert theirs.decode(ours.encode(text)) == ours.decode(ours.encode(text))
    assert "[MASK]" not in theirs.convert_ids_to_tokens(theirs("a [MASK] b")["input_ids"])  # text, as in lmkit
    assert (theirs.pad_token_id, theirs.bos_token_id, theirs.eos_token_id, theirs.mask_token_id) == (0, 2, 3, 4)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["plain", "lora-merged"])
def test_classifier_export_matches_lmkit(trained, tmp_path, lora_rank):
    labels = ["class", "function", "module"]
    source = write_finetuned(trained, tmp_path / "clf", labels=labels, lora_rank=lora_rank)
    exported = export(source, tmp_path / "hf")
    assert exported.stats["architecture"] == "LlamaForSequenceClassification"
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(exported.path, dtype=torch.float32)
    assert theirs.config.id2label == dict(enumerate(labels)) and theirs.config.pad_token_id == 0
    ours = read_checkpoint(source).build_model().eval()  # unmerged adapters, as lmkit runs it
    tokenizer = Tokenizer.from_artifact(read_checkpoint(source).tokenizer_path)
    texts = ["Return the length of an object.", "A class is a template", "x"]
    idx, mask = format_inputs([tokenizer.encode(t) for t in texts], "gpt", 128, LMKIT)  # lmkit's layout, right-padded
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported.path)
    batch = hf_tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], idx)  # the exported tokenizer gives that layout, padded on the right
    with torch.no_grad():
        expected = ours(idx, attention_mask=mask)[0]
        got = theirs(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert expected.argmax(-1).unique().numel() > 1 or expected.std() > 0.1  # not a constant answer


def test_sft_export_records_its_template(trained, tmp_path):
    source = write_finetuned(trained, tmp_path / "sft", template="### Q:\n{prompt}\n### A:\n")
    exported = export(source, tmp_path / "hf")
    info = json.loads((exported.path / "lmkit_export.json").read_text())
    assert info["prompt_template"] == "### Q:\n{prompt}\n### A:\n" and info["objective"] == "sft"
    assert exported.stats["architecture"] == "LlamaForCausalLM"


def test_export_is_an_artifact_with_lineage_and_refuses_to_clobber(trained, tmp_path):
    out = tmp_path / "hf"
    first = export(trained, out)
    assert artifacts.verify_tree(out)[1] == []
    assert first.parent_path("checkpoint") == trained.resolve()
    assert export(trained, out).up_to_date  # same checkpoint, same settings: nothing to do
    unchecked = export(trained, tmp_path / "unchecked", check=False)
    assert unchecked.stats["checked"] is False and unchecked.stats["max_abs_logit_difference"] is None
    assert unchecked.id == first.id  # --no-check changes how sure we are, not what is written
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an lmkit artifact; refusing to replace it"):
        export(trained, occupied)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]


def test_refused_check_leaves_nothing(trained, tmp_path, monkeypatch):
    """A check that finds a difference refuses the export, and no directory is left behind."""
    real = hf.hf_state_dict

    def corrupted(model, checkpoint):
        weights = real(model, checkpoint)
        weights["model.norm.weight"] = weights["model.norm.weight"] * 1.01
        return weights

    monkeypatch.setattr(hf, "hf_state_dict", corrupted)
    with pytest.raises(UserError, match="refusing to write a different model"):
        export(trained, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.tmp-*"))


@pytest.mark.parametrize("case,message", [
    ("gelu", "--mlp gelu (Llama's feed-forward is gated SwiGLU)"),
    ("bert", "lmkit's modern encoder (pre-norm RMSNorm, rotary positions"),
    ("lstm", "an LSTM (arch lstm) has no transformers equivalent"),
    ("mean-pooling", "classifier pooling 'mean' has no transformers equivalent"),
    ("shared", "--share-layers 1 (ALBERT-style sharing) has no exact transformers equivalent"),
])
def test_refusals_name_the_choice(dataset, trained, tmp_path, case, message):
    if case == "mean-pooling":
        source = write_finetuned(trained, tmp_path / "clf", labels=["a", "b"], pooling="mean")
    else:
        model = {"gelu": {"mlp": "gelu"}, "bert": {"model": "encoder-tiny"},
                 "lstm": {"model": "lstm-small", "d_model": 32, "n_layer": 1},
                 "shared": {"share_layers": 1, "embedding_dim": 32}}[case]
        source = train_tiny(dataset, tmp_path / "run", **model).path
    with pytest.raises(UserError, match=re.escape(message)):
        export(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_missing_transformers_names_the_extra(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(UserError, match=r"needs transformers: pip install 'lmkit\[hf\]'"):
        export(trained, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_classifier_tokenizer_follows_lmkits_input_layout(monkeypatch):
    """The exported tokenizer adds </s> exactly when lmkit's classifiers read one (asked of format_inputs)."""
    real = hf.format_inputs
    assert hf.classifier_appends_eos() == (real([[7, 8]], "gpt", 8, LMKIT)[0][0].tolist()[-1] == EOS)
    monkeypatch.setattr(hf, "format_inputs", lambda rows, arch, n, specials: real([[*r, EOS] for r in rows], arch, n,
                                                                                 specials))
    assert hf.classifier_appends_eos()


@pytest.mark.parametrize("preset,architecture", [("gpt2-tiny", "GPT2LMHeadModel"), ("bert-tiny", "BertForMaskedLM"),
                                                 ("bert-tiny+nsp", "BertForMaskedLM")])
def test_classic_presets_export_to_their_transformers_class(dataset, bert, tmp_path, preset, architecture):
    """lmkit-pretrained GPT-2 and classic BERT become GPT2LMHeadModel and BertForMaskedLM; transformers agrees
    on padded batches, and a classifier on each becomes its ...ForSequenceClassification. A BERT pretrained with
    NSP exports its masked LM (without the pooler and sentence head, which BertForMaskedLM has not)."""
    if preset == "bert-tiny+nsp":
        source = train_tiny(dataset, tmp_path / "run", model="bert-tiny", objective="mlm+nsp").path
        preset = "bert-tiny"
    else:
        source = bert if preset == "bert-tiny" else train_tiny(dataset, tmp_path / "run", model=preset).path
    exported = export(source, tmp_path / "hf")
    assert exported.stats["architecture"] == architecture and exported.stats["max_abs_logit_difference"] <= 1e-4
    auto = transformers.AutoModelForMaskedLM if preset == "bert-tiny" else transformers.AutoModelForCausalLM
    theirs = auto.from_pretrained(exported.path, dtype=torch.float32).eval()
    ours = read_checkpoint(source).inference_model()
    idx = torch.randint(7, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    with torch.no_grad():
        expected = theirs(input_ids=idx, attention_mask=mask.long()).logits
        got = ours(idx, attention_mask=mask)[0] if preset == "bert-tiny" else ours(idx)[0]
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    pooling = "cls" if preset == "bert-tiny" else "last"
    classifier = write_finetuned(source, tmp_path / "clf", labels=["a", "b", "c"], pooling=pooling)
    exported = export(classifier, tmp_path / "hf-clf")
    assert exported.stats["architecture"] == architecture.replace("LMHeadModel", "ForSequenceClassification") \
        .replace("ForMaskedLM", "ForSequenceClassification")


def test_a_greedy_mismatch_refuses_the_export(trained, tmp_path, monkeypatch):
    """Logits within tolerance are not enough: the greedy continuations must be the same ids too."""
    from lmkit.generation import decode as decoding

    real = decoding.decode

    def off_by_one(*args, **kwargs):
        results = real(*args, **kwargs)
        for result in results:
            result.ids[-1] = (result.ids[-1] + 1) % 400
        return results

    monkeypatch.setattr(decoding, "decode", off_by_one)
    with pytest.raises(UserError, match="greedy decoding in transformers' LlamaForCausalLM picks"):
        export(trained, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
