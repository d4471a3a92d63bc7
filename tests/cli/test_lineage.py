import json

from tests.conftest import invoke_lmkit


def test_lineage_reaches_raw_files(dataset, text_corpus):
    tree = json.loads(invoke_lmkit("lineage", str(dataset), "--json", check=True).stdout)
    assert tree["kind"] == "dataset"
    (tokenizer,) = tree["parents"]
    assert tokenizer["role"] == "tokenizer" and tokenizer["kind"] == "tokenizer"
    assert [f["path"] for f in tokenizer["files"]] == [str(text_corpus / "docs.txt")]
    text = invoke_lmkit("lineage", str(dataset), check=True).stdout
    assert "tokenizer: tokenizer" in text and "docs.txt" in text


def test_lineage_flags_a_changed_parent(tmp_path, text_corpus, dataset):
    child = tmp_path / "child"
    invoke_lmkit("preprocess", str(text_corpus), "--tokenizer", str(dataset / "tokenizer"), "--out", str(child),
                 check=True)
    moved = tmp_path / "tok"
    import shutil
    shutil.copytree(dataset / "tokenizer", moved)
    # point the child at a different tokenizer by replacing the referenced one's manifest id
    manifest = json.loads((child / "manifest.json").read_text())
    manifest["inputs"]["artifacts"][0]["path"] = "../tok"
    manifest["inputs"]["artifacts"][0]["id"] = "f" * 32
    (child / "manifest.json").write_text(json.dumps(manifest))
    tree = json.loads(invoke_lmkit("lineage", str(child), "--json", check=True).stdout)
    assert "changed since" in tree["parents"][0]["error"]


def test_checkpoint_lineage_shows_a_shared_parent_once(dataset, tmp_path):
    from tests.conftest import train_tiny

    final = train_tiny(dataset, tmp_path / "run")
    text = invoke_lmkit("lineage", str(final.path), check=True).stdout
    assert text.count("tokenizer: tokenizer") == 2 and text.count("(its lineage is shown above)") == 1
    assert "dataset: dataset" in text


def test_lineage_shows_key_values_and_json_has_config_and_stats(dataset, tmp_path):
    from tests.conftest import train_tiny

    final = train_tiny(dataset, tmp_path / "run", lr=0.002)
    text = invoke_lmkit("lineage", str(final.path), check=True).stdout
    root = text.splitlines()[0]
    assert root.startswith(f"checkpoint {final.id[:12]}  {final.path}  [")
    assert "model gpt-tiny, arch gpt, objective clm, step 2, max_steps 2, lr 0.002]" in root
    (dataset_line,) = [line for line in text.splitlines() if "dataset: dataset" in line]
    assert "[tokenizer bpe, vocab 400, documents " in dataset_line and "tokens " in dataset_line
    assert "tokenizer: tokenizer" in text and "[type bpe, vocab 400]" in text
    tree = json.loads(invoke_lmkit("lineage", str(final.path), "--json", check=True).stdout)
    assert tree["config"]["lr"] == 0.002 and tree["stats"]["step"] == 2 and tree["created_at"]
    (parent,) = [p for p in tree["parents"] if p["role"] == "dataset"]
    assert parent["stats"]["vocab_size"] == 400 and parent["config"]["tokenizer_type"] == "bpe"
    assert parent["parents"][0]["config"]["type"] == "bpe"


def test_key_values_of_each_kind():
    from lmkit.cli.lineage import key_values

    assert key_values({"kind": "dataset", "config": {"tokenizer": "tok/", "tokenizer_type": "bpe"},
                       "stats": {"vocab_size": 8000, "documents_kept": 12, "tokens": 123456,
                                 "labels": {"names": ["a", "b"]}}}) == \
        "vocab 8000, documents 12, tokens 123,456, labels a,b"  # a reused tokenizer: its type is its own node's
    assert key_values({"kind": "checkpoint", "config": {"model": None, "task": "classify", "lora_rank": 8, "lr": 3e-4},
                       "stats": {"arch": "bert", "objective": "classify", "step": 40}}) == \
        "arch bert, objective classify, task classify, step 40, lr 0.0003, lora_rank 8"
    assert key_values({"kind": "export", "config": {"format": "hf"}, "stats": {"architecture": "LlamaForCausalLM"}}) \
        == "format hf, as LlamaForCausalLM"
    assert key_values({"kind": "report", "config": {}, "stats": {}}) == ""
    assert key_values({"path": "x", "error": "gone"}) == ""
