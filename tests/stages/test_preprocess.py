"""The preprocess stage through its Python API: real files in, verified shards out."""

import csv
import errno
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pytest

from lmkit import artifacts
from lmkit.config import resolve
from lmkit.data.cleaning import clean_text
from lmkit.data.shards import ShardWriter, read_shard
from lmkit.errors import UserError
from lmkit.stages import preprocess
from lmkit.stages.preprocess_config import PreprocessConfig
from lmkit.tokenizer import Tokenizer
from tests.conftest import paragraphs

PARAGRAPHS = paragraphs(400)


def config(inputs, out, **overrides):
    values = {"inputs": [str(p) for p in inputs], "out": str(out), "vocab_size": 400, "workers": 1,
              "near_dedup": False}
    values.update(overrides)
    if "tokenizer" in values:  # a reused tokenizer takes no tokenizer settings
        del values["vocab_size"]
    return resolve(PreprocessConfig, {}, values)


def dataset_docs(path, split="train"):
    art = artifacts.load(path, kind="dataset")
    shards = art.stats["splits"].get(split, {"shards": []})["shards"]
    if not shards:
        return pa.table({"id": pa.array([], pa.uint64())})
    return pa.concat_tables([read_shard(art.path / s["file"]) for s in shards])


@pytest.fixture
def corpus(tmp_path):
    directory = tmp_path / "corpus"
    directory.mkdir()
    (directory / "a.txt").write_text("\n\n".join(PARAGRAPHS[:150]) + "\n")
    with gzip.open(directory / "b.jsonl.gz", "wt") as f:
        for i, p in enumerate(PARAGRAPHS[150:300]):
            f.write(json.dumps({"meta": {"body": p}, "n": i}) + "\n")
    return directory


def all_texts(path):
    art = artifacts.load(path)
    tokenizer = Tokenizer.from_artifact(art.path / "tokenizer")
    texts = {}
    for split in art.stats["splits"]:
        table = dataset_docs(path, split)
        for doc_id, tokens, n_bytes in zip(table.column("id").to_pylist(), table.column("tokens").to_pylist(),
                                           table.column("n_bytes").to_pylist()):
            text = tokenizer.decode(tokens)
            assert len(text.encode()) == n_bytes
            texts[doc_id] = (split, text)
    return texts


def test_mixed_inputs_round_trip_through_shards(corpus, tmp_path):
    out = tmp_path / "data"
    art = preprocess.run(config([corpus / "a.txt"], out, text_field="meta.body", val_fraction=0.1))
    art2 = preprocess.run(config([corpus], tmp_path / "data2", text_field="meta.body", val_fraction=0.1,
                                 filters="none"))
    assert art.stats["documents_in"] == 150 and art2.stats["documents_in"] == 300
    texts = sorted(text for _, text in all_texts(tmp_path / "data2").values())
    expected = sorted({clean_text(p) for p in PARAGRAPHS[:300]})
    assert texts == expected  # every kept document decodes back to its cleaned text
    splits = art2.stats["splits"]
    assert 0 < splits["validation"]["documents"] < 0.25 * art2.stats["documents_kept"]
    assert art2.stats["tokens"] == splits["train"]["tokens"] + splits["validation"]["tokens"]
    assert dataset_docs(tmp_path / "data2").schema.field("tokens").type == pa.list_(pa.uint16())
    assert [Path(f["path"]).name for f in art2.manifest["inputs"]["files"]] == ["a.txt", "b.jsonl.gz"]
    assert art2.parent_path("tokenizer") == (tmp_path / "data2" / "tokenizer").resolve()


def test_workers_do_not_change_the_output(corpus, tmp_path):
    one = preprocess.run(config([corpus], tmp_path / "one", text_field="meta.body", near_dedup=True))
    two = preprocess.run(config([corpus], tmp_path / "two", text_field="meta.body", near_dedup=True, workers=2))
    assert one.id == two.id
    files = {name: entry for name, entry in one.manifest["files"].items() if name != "tokenizer/manifest.json"}
    assert files == {name: two.manifest["files"][name] for name in files}  # same bytes, shard by shard


def test_documents_are_shuffled_deterministically(corpus, tmp_path):
    a = preprocess.run(config([corpus / "a.txt"], tmp_path / "a", val_fraction=0.0, seed=1))
    b = preprocess.run(config([corpus / "a.txt"], tmp_path / "b", val_fraction=0.0, seed=2, shuffle_buffer=50))
    ids_a = dataset_docs(a.path).column("id").to_pylist()
    ids_b = dataset_docs(b.path).column("id").to_pylist()
    assert sorted(ids_a) == sorted(ids_b) and ids_a != ids_b
    again = preprocess.run(config([corpus / "a.txt"], tmp_path / "a2", val_fraction=0.0, seed=1))
    assert dataset_docs(again.path).column("id").to_pylist() == ids_a


def test_split_is_stable_when_documents_are_added(tmp_path):
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("\n\n".join(PARAGRAPHS[:200]))
    large.write_text("\n\n".join(PARAGRAPHS[100:400] + PARAGRAPHS[:100]))  # more, and reordered
    a = preprocess.run(config([small], tmp_path / "a", val_fraction=0.2, filters="none"))
    b = preprocess.run(config([large], tmp_path / "b", val_fraction=0.2, filters="none",
                              tokenizer=str(a.path / "tokenizer")))
    split_a = {doc: split for doc, (split, _) in all_texts(a.path).items()}
    split_b = {doc: split for doc, (split, _) in all_texts(b.path).items()}
    assert set(split_a) < set(split_b)
    assert all(split_b[doc] == split for doc, split in split_a.items())
    assert {"train", "validation"} == set(split_a.values())


def test_exact_and_near_duplicates(tmp_path):
    base = PARAGRAPHS[0] + " " + PARAGRAPHS[1] + " " + PARAGRAPHS[2]
    words = base.split()
    near = " ".join(words[:-1] + ["changed"])
    docs = [base, PARAGRAPHS[5], base, near, PARAGRAPHS[6]]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs + PARAGRAPHS[10:40]))
    art = preprocess.run(config([path], tmp_path / "out", near_dedup=True, filters="none", val_fraction=0.0))
    assert art.stats["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}
    texts = [text for _, text in all_texts(art.path).values()]
    assert clean_text(base) in texts and clean_text(near) not in texts  # the first of a cluster survives
    no_dedup = preprocess.run(config([path], tmp_path / "out2", dedup=False, filters="none", val_fraction=0.0))
    assert no_dedup.stats["dropped"] == {}


def test_filters_are_counted_and_switchable(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("\n".join(["tiny", "#### #### #### #### hello there friend", "1 2 3 4 5 6 7 8 9 10 11 12 13"]
                              + PARAGRAPHS[:30]) + "\n")
    art = preprocess.run(config([path], tmp_path / "out", split_by="line", val_fraction=0.0))
    assert art.stats["dropped"] == {"too_short": 1, "symbols": 1, "non_alpha": 1}
    none = preprocess.run(config([path], tmp_path / "out2", split_by="line", val_fraction=0.0, filters="none"))
    assert none.stats["dropped"] == {} and none.stats["documents_kept"] == art.stats["documents_kept"] + 3


def test_labels(tmp_path):
    path = tmp_path / "l.jsonl"
    records = [{"text": p, "label": ["b", "a", "c"][i % 3]} for i, p in enumerate(PARAGRAPHS[:60])]
    records.append({"text": PARAGRAPHS[70]})  # no label: dropped and counted
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    art = preprocess.run(config([path], tmp_path / "out", label_field="label", val_fraction=0.2, filters="none"))
    labels = art.stats["labels"]
    assert labels["names"] == ["a", "b", "c"]
    assert art.stats["dropped"]["missing_label"] == 1
    assert sum(sum(c.values()) for c in labels["counts"].values()) == art.stats["documents_kept"] == 60
    table = dataset_docs(art.path)
    tokenizer = Tokenizer.from_artifact(art.path / "tokenizer")
    by_text = {clean_text(r["text"]): r["label"] for r in records[:60]}
    for tokens, label in zip(table.column("tokens").to_pylist(), table.column("label").to_pylist()):
        assert labels["names"][label] == by_text[tokenizer.decode(tokens)]


def test_numeric_labels_sort_numerically(tmp_path):
    path = tmp_path / "l.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([p, [10, 2, 1][i % 3]] for i, p in enumerate(PARAGRAPHS[:30]))
    art = preprocess.run(config([path], tmp_path / "out", label_field="label"))
    assert art.stats["labels"]["names"] == ["1", "2", "10"]


def test_explicit_validation_inputs(corpus, tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("\n\n".join(PARAGRAPHS[300:320] + PARAGRAPHS[:2]))  # two duplicates of training text
    art = preprocess.run(config([corpus / "a.txt"], tmp_path / "out", val_inputs=[str(val)], val_fraction=0.5))
    assert art.stats["splits"]["validation"]["documents"] == 20
    assert art.stats["dropped"]["exact_duplicate"] == 2  # no train text leaks into validation
    roles = [f["role"] for f in art.manifest["inputs"]["files"]]
    assert roles == ["train", "validation"]


def test_stdin_input_has_lineage(tmp_path):
    data = ("\n\n".join(PARAGRAPHS[:40])).encode()
    art = preprocess.run(config(["-"], tmp_path / "out"), stdin=io.BytesIO(data))
    (record,) = art.manifest["inputs"]["files"]
    assert record["path"] == "-" and record["size"] == len(data)
    with pytest.raises(UserError, match="cannot\\s+tell whether it is up to date"):
        preprocess.run(config(["-"], tmp_path / "out"), stdin=io.BytesIO(data))


def test_up_to_date_changed_input_and_force(corpus, tmp_path):
    out = tmp_path / "out"
    first = preprocess.run(config([corpus / "a.txt"], out))
    again = preprocess.run(config([corpus / "a.txt"], out, workers=2))  # runtime-only flags do not matter
    assert again.up_to_date and again.id == first.id
    with (corpus / "a.txt").open("a") as f:
        f.write("\n\n" + PARAGRAPHS[350] + "\n")
    with pytest.raises(UserError, match="already holds a different dataset"):
        preprocess.run(config([corpus / "a.txt"], out))
    assert artifacts.load(out).id == first.id
    forced = preprocess.run(config([corpus / "a.txt"], out, force=True))
    assert forced.id != first.id and forced.stats["documents_in"] == 151


def test_reused_tokenizer_is_copied_and_linked(corpus, tmp_path):
    a = preprocess.run(config([corpus / "a.txt"], tmp_path / "a"))
    b = preprocess.run(config([corpus / "b.jsonl.gz"], tmp_path / "b", text_field="meta.body",
                              tokenizer=str(a.path / "tokenizer")))
    assert artifacts.load(b.path / "tokenizer").id == artifacts.load(a.path / "tokenizer").id
    (parent,) = b.parents
    assert parent["role"] == "tokenizer" and (b.path / parent["path"]).resolve() == (a.path / "tokenizer").resolve()
    with pytest.raises(UserError, match="is a dataset artifact, expected a tokenizer"):
        preprocess.run(config([corpus / "a.txt"], tmp_path / "c", tokenizer=str(a.path)))


@pytest.mark.parametrize("content,options,message", [
    (b"", {}, "no documents left after cleaning and filtering"),
    (b"\n\n   \n", {}, "no documents left"),
    (b"good line one here\n\xff\xfe bad\n", {"split_by": "line"}, ":2: invalid UTF-8"),
    (b"\x00\x01binary", {}, "looks binary"),
])
def test_bad_text_inputs_leave_no_artifact(tmp_path, content, options, message):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        preprocess.run(config([path], tmp_path / "out", **options))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")] == []


def test_encoding_errors_replace_and_skip_are_counted(tmp_path):
    path = tmp_path / "in.txt"
    lines = [p.replace("\n", " ") for p in PARAGRAPHS[:30]]
    lines[3] = lines[3][:20] + "\udcff" + lines[3][20:]
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape"))
    replaced = preprocess.run(config([path], tmp_path / "r", split_by="line", encoding_errors="replace"))
    assert replaced.stats["encoding_replaced"] == 1 and replaced.stats["documents_kept"] == 30
    skipped = preprocess.run(config([path], tmp_path / "s", split_by="line", encoding_errors="skip"))
    assert skipped.stats["dropped"]["invalid_utf8"] == 1 and skipped.stats["documents_kept"] == 29


def test_bad_json_record_error_and_skip(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": p}) for p in PARAGRAPHS[:20]]
    lines[4] = '{"text": "broken'
    lines[7] = json.dumps({"body": "no text field"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"in.jsonl:5: .*--skip-bad-records"):
        preprocess.run(config([path], tmp_path / "out"))
    art = preprocess.run(config([path], tmp_path / "out", skip_bad_records=True))
    assert art.stats["dropped"]["bad_record"] == 2 and art.stats["documents_kept"] == 18


def test_oversized_line_refused(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(PARAGRAPHS[:20]) + "\n" + "word " * 300_000 + "\n")
    with pytest.raises(UserError, match="longer than 1000000 bytes"):
        preprocess.run(config([path], tmp_path / "out", split_by="line", max_record_bytes="1MB"))
    art = preprocess.run(config([path], tmp_path / "out", split_by="line", max_record_bytes="1MB",
                                skip_bad_records=True))
    assert art.stats["dropped"]["bad_record"] == 1


def test_disk_full_keeps_earlier_artifact(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = preprocess.run(config([corpus / "a.txt"], out))

    def full(self, batch):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ShardWriter, "write", full)
    with pytest.raises(UserError, match="no space left on device"):
        preprocess.run(config([corpus / "a.txt"], out, vocab_size=500, force=True))
    assert artifacts.load(out).id == first.id
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_config_problems_reported_together(tmp_path):
    from lmkit.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        config(["x"], tmp_path / "o", val_fraction=1.5, vocab_size=10, shard_size="big", filters="few_words,nope")
    text = str(info.value)
    for flag in ("--val-fraction", "--vocab-size", "--shard-size", "--filters"):
        assert flag in text


def test_tokenizer_sample_is_bounded(corpus, tmp_path):
    art = preprocess.run(config([corpus / "a.txt"], tmp_path / "o", tokenizer_sample_size="5KB"))
    share = art.stats["tokenizer"]["sample_share"]
    assert 0 < share < 0.5
    assert art.stats["tokenizer"]["training_sentences_seen"] < 0.5 * art.stats["splits"]["train"]["documents"]


def test_test_split_shards_html_and_unigram(tmp_path):
    path = tmp_path / "pages.jsonl"
    path.write_text("".join(json.dumps({"text": f"<html><head><title>t</title></head><body><p>{p}</p>"
                                                f"<script>var x = 1;</script></body></html>"}) + "\n"
                            for p in PARAGRAPHS[:200]))
    art = preprocess.run(config([path], tmp_path / "o", strip_html=True, test_fraction=0.1, val_fraction=0.1,
                                tokenizer_type="unigram", shard_size="8KB", filters="none"))
    splits = art.stats["splits"]
    assert set(splits) == {"train", "validation", "test"} and splits["test"]["documents"] > 5
    assert len(splits["train"]["shards"]) > 1
    texts = [text for _, text in all_texts(art.path).values()]
    assert all("<" not in t and "var x" not in t for t in texts)
    assert artifacts.load(art.path / "tokenizer").config["type"] == "unigram"


def test_tokenizer_settings_with_a_reused_tokenizer_are_refused(corpus, tmp_path):
    from lmkit.errors import ConfigError

    a = preprocess.run(config([corpus / "a.txt"], tmp_path / "a"))
    with pytest.raises(ConfigError, match="--vocab-size: has no effect with --tokenizer"):
        resolve(PreprocessConfig, {}, {"inputs": ["x"], "out": "o", "tokenizer": str(a.path / "tokenizer"),
                                       "vocab_size": 500})


def test_stdin_tokenizer_lineage_includes_stdin(tmp_path):
    data = ("\n\n".join(PARAGRAPHS[:40])).encode()
    art = preprocess.run(config(["-"], tmp_path / "out"), stdin=io.BytesIO(data))
    tokenizer = artifacts.load(art.path / "tokenizer")
    assert [f["path"] for f in tokenizer.manifest["inputs"]["files"]] == ["-"]


def test_renaming_an_input_to_another_format_is_not_up_to_date(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("\n".join(json.dumps({"text": p}) for p in PARAGRAPHS[:40]))
    preprocess.run(config([a], tmp_path / "out", split_by="line"))
    b = a.rename(tmp_path / "a.jsonl")
    with pytest.raises(UserError, match="already holds a different dataset"):
        preprocess.run(config([b], tmp_path / "out", split_by="line"))


def test_odd_labels_sort_lexically(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text("".join(json.dumps({"text": p, "label": ["--1", "²", "3"][i % 3]}) + "\n"
                            for i, p in enumerate(PARAGRAPHS[:30])))
    art = preprocess.run(config([path], tmp_path / "out", label_field="label"))
    assert art.stats["labels"]["names"] == ["--1", "3", "²"]


def test_validation_inputs_that_are_all_training_text_are_refused(corpus, tmp_path):
    with pytest.raises(UserError, match="--val-inputs: no validation document is left"):
        preprocess.run(config([corpus / "a.txt"], tmp_path / "out", val_inputs=[str(corpus / "a.txt")]))
    assert not (tmp_path / "out").exists()


def test_languages_are_identified_counted_and_filtered(tmp_path):
    from tests.multilingual import write_jsonl

    pytest.importorskip("py3langid")
    source = write_jsonl(tmp_path / "mixed.jsonl", {"en": 60, "de": 30, "fr": 12})
    base = {"filters": ["none"], "val_fraction": 0.0}
    everything = preprocess.run(config([source], tmp_path / "all", language_id=True, **base))
    assert everything.stats["languages"]["documents"] == {"train": {"en": 60, "de": 30, "fr": 12}}
    tokens = everything.stats["languages"]["tokens"]["train"]
    assert sum(tokens.values()) == everything.stats["tokens"]
    table = dataset_docs(everything.path)
    assert sorted(table.column("lang").to_pylist()) == sorted(["en"] * 60 + ["de"] * 30 + ["fr"] * 12)
    kept = preprocess.run(config([source], tmp_path / "de-en", languages=["de", "en"], **base))
    assert kept.stats["languages"]["documents"] == {"train": {"en": 60, "de": 30}}
    assert kept.stats["dropped"] == {"other_language": 12}
    balanced = preprocess.run(config([source], tmp_path / "balanced", language_id=True, tokenizer_language_alpha=0.0,
                                     tokenizer_sample_size="2KB", **base))
    shares = balanced.stats["tokenizer"]["language_sample_share"]  # equal bytes per language: rarer ones denser
    assert shares["fr"] > shares["de"] > shares["en"]
    for languages, message in ((["de", "xx"], "--languages xx: not a language the identifier knows"),
                               (["de", "es"], r"--languages es: no document is left in es after filtering \(kept: "
                                              r"de 30\); nothing was written")):
        with pytest.raises(UserError, match=message):
            preprocess.run(config([source], tmp_path / "refused", languages=languages, **base))
        assert not (tmp_path / "refused").exists()
    with pytest.raises(UserError, match="--tokenizer-language-alpha: balances identified languages"):
        config([source], tmp_path / "x", tokenizer_language_alpha=0.5)


def test_pairs_are_cleaned_deduplicated_as_pairs_and_stored_in_pair_tokens(tmp_path):
    path = tmp_path / "pairs.jsonl"
    records = [{"text": PARAGRAPHS[i], "h": {"t": PARAGRAPHS[i + 1] + "\x00"}, "y": "ab"[i % 2]} for i in range(40)]
    records += [dict(records[0]),                                       # the same pair: an exact duplicate
                {"text": PARAGRAPHS[0], "h": {"t": PARAGRAPHS[50]}, "y": "a"},  # the same text, another pair: kept
                {"text": PARAGRAPHS[51], "h": {"t": " \x01 "}, "y": "a"},       # cleans to nothing
                {"text": PARAGRAPHS[52], "y": "b"},                             # no pair text: a bad record
                {"text": "Tiny.", "h": {"t": PARAGRAPHS[53]}, "y": "b"},         # the filters judge the text...
                {"text": PARAGRAPHS[54], "h": {"t": "Yes."}, "y": "b"}]          # ...not the pair text
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UserError, match=rf"^{path}:44: no text at --text-pair-field 'h.t' \(not found\); use "):
        preprocess.run(config([path], tmp_path / "out", text_pair_field="h.t", label_field="y"))
    assert not (tmp_path / "out").exists()
    art = preprocess.run(config([path], tmp_path / "out", text_pair_field="h.t", label_field="y",
                                skip_bad_records=True, near_dedup=True, val_fraction=0.2, filters="too_short"))
    assert art.stats["dropped"] == {"bad_record": 1, "empty_pair": 1, "exact_duplicate": 1, "too_short": 1}
    assert art.stats["documents_kept"] == 42 and art.manifest["config"]["text_pair_field"] == "h.t"
    tokenizer = Tokenizer.from_artifact(art.path / "tokenizer")
    expected = {(clean_text(r["text"]), clean_text(r["h"]["t"])) for r in records[:42] + records[-1:]}
    found = set()
    for split, info in art.stats["splits"].items():
        table = dataset_docs(art.path, split)
        assert table.column_names == ["id", "tokens", "pair_tokens", "n_bytes", "label"]
        assert info["pair_tokens"] == sum(len(t) for t in table.column("pair_tokens").to_pylist()) > 0
        pairs = zip(table.column("tokens").to_pylist(), table.column("pair_tokens").to_pylist())
        found |= {(tokenizer.decode(a), tokenizer.decode(b)) for a, b in pairs}
    assert found == expected
    assert art.stats["pairs"]["tokens"] == sum(info["pair_tokens"] for info in art.stats["splits"].values())
    assert "pair_tokens" not in dataset_docs(preprocess.run(config([path], tmp_path / "single")).path).column_names
