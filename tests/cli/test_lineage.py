import json

from tests.conftest import run_lmkit


def test_lineage_reaches_raw_files(dataset, text_corpus):
    tree = json.loads(run_lmkit("lineage", str(dataset), "--json", check=True).stdout)
    assert tree["kind"] == "dataset"
    (tokenizer,) = tree["parents"]
    assert tokenizer["role"] == "tokenizer" and tokenizer["kind"] == "tokenizer"
    assert [f["path"] for f in tokenizer["files"]] == [str(text_corpus / "docs.txt")]
    text = run_lmkit("lineage", str(dataset), check=True).stdout
    assert "tokenizer: tokenizer" in text and "docs.txt" in text


def test_lineage_flags_a_changed_parent(tmp_path, text_corpus, dataset):
    child = tmp_path / "child"
    run_lmkit("preprocess", str(text_corpus), "--tokenizer", str(dataset / "tokenizer"), "--out", str(child),
              check=True)
    moved = tmp_path / "tok"
    import shutil
    shutil.copytree(dataset / "tokenizer", moved)
    # point the child at a different tokenizer by replacing the referenced one's manifest id
    manifest = json.loads((child / "manifest.json").read_text())
    manifest["inputs"]["artifacts"][0]["path"] = "../tok"
    manifest["inputs"]["artifacts"][0]["id"] = "f" * 32
    (child / "manifest.json").write_text(json.dumps(manifest))
    tree = json.loads(run_lmkit("lineage", str(child), "--json", check=True).stdout)
    assert "changed since" in tree["parents"][0]["error"]


def test_checkpoint_lineage_shows_a_shared_parent_once(dataset, tmp_path):
    from tests.conftest import train_tiny

    final = train_tiny(dataset, tmp_path / "run")
    text = run_lmkit("lineage", str(final.path), check=True).stdout
    assert text.count("tokenizer: tokenizer") == 2 and text.count("(its lineage is shown above)") == 1
    assert "dataset: dataset" in text
