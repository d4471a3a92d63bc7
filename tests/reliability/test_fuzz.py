"""Fuzzing the parsers that take outside input: manifests, configs, shards and raw input files.

Each either succeeds or fails with an lmkit error (ArtifactError, ConfigError, UserError): never another
exception. The suite runs EXAMPLES[...] examples per test (2,200 in all); `FUZZ_EXAMPLES=N` runs N per test
for a longer campaign outside the suite.
"""

import collections
import dataclasses
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmkit import artifacts
from lmkit.artifacts import MANIFEST
from lmkit.config import resolve
from lmkit.data.shards import ShardWriter, make_batch, read_shard, schema
from lmkit.data.sources import RawDocument, ReadOptions, iter_documents
from lmkit.errors import ArtifactError, ConfigError, UserError
from lmkit.stages.preprocess_config import PreprocessConfig
from lmkit.stages.pretrain_config import PretrainConfig

_CAMPAIGN = int(os.environ.get("FUZZ_EXAMPLES", "0"))
EXAMPLES = {"manifest": 600, "config": 500, "shards": 200, "reader": 900}


def fuzz_settings(name):
    return settings(max_examples=_CAMPAIGN or EXAMPLES[name], deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Text with lone surrogates too (hypothesis leaves them out by default): JSON escapes and undecodable
# bytes read with surrogateescape both produce them.
any_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12)


# -- manifests -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dir(dataset, tmp_path_factory):
    """A writable copy of a real tokenizer artifact; each example replaces its manifest."""
    target = tmp_path_factory.mktemp("fuzz") / "tokenizer"
    shutil.copytree(dataset / "tokenizer", target)
    (target.parent / "valid.json").write_bytes((target / MANIFEST).read_bytes())
    return target


flips = st.lists(st.tuples(st.floats(0, 1), st.binary(max_size=3)), min_size=1, max_size=8)


def apply_flips(data, changes):
    """Replace the byte at each (relative position) with 0-3 bytes."""
    data = bytearray(data)
    for where, replacement in changes:
        position = int(where * max(len(data) - 1, 0))
        data[position:position + 1] = replacement
    return bytes(data)


# (action, field, key inside the field, value) applied to a valid manifest
edits = st.lists(st.tuples(
    st.sampled_from(["delete", "replace", "inner"]), st.sampled_from(artifacts.manifest.MANIFEST_FIELDS) | any_text,
    st.sampled_from(["tokenizer.model", "artifacts", "files", "vocab_size"]) | any_text,
    json_values | st.dictionaries(st.sampled_from(["size", "sha256", "id", "path", "role"]), json_values, max_size=3)),
    min_size=1, max_size=4)


def apply_edits(manifest, changes):
    for action, field, key, value in changes:
        if action == "delete":
            manifest.pop(field, None)
        elif action == "inner" and isinstance(manifest.get(field), dict):
            manifest[field][key] = value
        else:
            manifest[field] = value
    return manifest


manifest_contents = (st.tuples(st.just("edited"), edits) | st.tuples(st.just("json"), json_values)
                     | st.tuples(st.just("bytes"), st.binary(max_size=300)) | st.tuples(st.just("flipped"), flips))


@fuzz_settings("manifest")
@given(content=manifest_contents)
@example(content=("bytes", b"[" * 100_000 + b"]" * 100_000))  # RecursionError in the JSON decoder
@example(content=("edited", [("replace", "kind", "", [])]))  # TypeError: unhashable kind (found by the fuzzer)
@example(content=("edited", [("inner", "config", "", "\ud800")]))  # UnicodeEncodeError hashing (found by the fuzzer)
def test_any_manifest_loads_or_is_an_artifact_error(tokenizer_dir, content):
    how, value = content
    valid = (tokenizer_dir.parent / "valid.json").read_bytes()
    data = {"edited": lambda: json.dumps(apply_edits(json.loads(valid), value)).encode(),
            "json": lambda: json.dumps(value).encode(), "bytes": lambda: value,
            "flipped": lambda: apply_flips(valid, value)}[how]()
    loads_or_is_an_artifact_error(tokenizer_dir, data)


def loads_or_is_an_artifact_error(directory, manifest):
    """True when the artifact with this manifest loads, False when refused with an ArtifactError; any other
    exception escapes and fails the test."""
    (directory / MANIFEST).write_bytes(manifest)
    try:
        artifacts.read_manifest(directory)
        artifacts.load(directory)
    except ArtifactError:
        return False
    return True


def test_positive_control_a_valid_manifest_loads(tokenizer_dir):
    # The fuzz test passes when every manifest is refused; these valid ones, the original and the same
    # fields re-serialized, must load through the same code, or the fuzz test proves nothing.
    valid = (tokenizer_dir.parent / "valid.json").read_bytes()
    assert loads_or_is_an_artifact_error(tokenizer_dir, valid)
    assert loads_or_is_an_artifact_error(tokenizer_dir, json.dumps(apply_edits(json.loads(valid), [])).encode())
    assert not loads_or_is_an_artifact_error(tokenizer_dir, b"{}")  # and the helper tells the two apart


# -- configs -------------------------------------------------------------------------------------------
toml_values = st.recursive(
    st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=12) | st.datetimes()
    | st.dates() | st.times() | st.from_regex(r"\A ?[0-9]{1,400}(\.[0-9]{1,4})? ?(b|KB|mib|GiB|TB|x|s|m|h)? ?\Z"),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6)
REQUIRED = {PreprocessConfig: {"inputs": ["corpus.txt"], "out": "data"},
            PretrainConfig: {"dataset": "data", "out": "run"}}


def config_values(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    keys = st.sampled_from(names) | st.sampled_from(["vocab", "max-steps", "Seed", ""]) | st.text(max_size=8)
    return st.tuples(st.booleans(), st.dictionaries(keys, toml_values, max_size=6)).map(
        lambda pair: {**(REQUIRED[cls] if pair[0] else {}), **pair[1]})


configs = st.sampled_from([PreprocessConfig, PretrainConfig]).flatmap(
    lambda cls: st.tuples(st.just(cls), config_values(cls)))


@fuzz_settings("config")
@given(config=configs)
@example(config=(PreprocessConfig, {"inputs": ["a"], "out": "o", "shard_size": "9" * 400}))  # inf bytes
@example(config=(PretrainConfig, {"dataset": "d", "out": "o", "max_time": "9" * 400}))  # inf seconds
def test_any_config_resolves_or_is_a_config_error(config):
    cls, values = config
    resolves_or_is_a_config_error(cls, values)


def resolves_or_is_a_config_error(cls, values):
    """True when the values resolve, False when refused with a ConfigError or UserError; any other exception
    escapes and fails the test."""
    try:
        resolve(cls, values, {})
    except (ConfigError, UserError):
        return False
    return True


@pytest.mark.parametrize("cls,values", [
    (PreprocessConfig, REQUIRED[PreprocessConfig]),
    (PretrainConfig, REQUIRED[PretrainConfig]),
    (PreprocessConfig, {**REQUIRED[PreprocessConfig], "shard_size": "8KB", "vocab_size": 400, "seed": 3}),
    (PretrainConfig, {**REQUIRED[PretrainConfig], "max_time": "90s", "max_steps": 20, "lr": 0.001}),
], ids=["preprocess-required", "pretrain-required", "preprocess-options", "pretrain-options"])
def test_positive_control_valid_configs_resolve(cls, values):
    # The fuzz test passes when every config is refused; these valid ones must resolve through the same code.
    assert resolves_or_is_a_config_error(cls, values)
    assert not resolves_or_is_a_config_error(cls, {})  # and the helper tells the two apart: required fields


# -- shards --------------------------------------------------------------------------------------------
@fuzz_settings("shards")
@given(documents=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.lists(st.integers(0, 2**16 - 1), max_size=40),
                                    st.integers(0, 2**32 - 1), st.integers(0, 2**31 - 1)), max_size=60),
       with_labels=st.booleans(), batch_docs=st.integers(1, 25), max_bytes=st.integers(1, 2000))
def test_shards_round_trip(documents, with_labels, batch_docs, max_bytes):
    shard_schema = schema("uint16", with_labels)
    with tempfile.TemporaryDirectory() as directory:
        writer = ShardWriter(Path(directory), "train", max_bytes, shard_schema)
        for start in range(0, len(documents), batch_docs):
            ids, tokens, n_bytes, labels = map(list, zip(*documents[start:start + batch_docs]))
            writer.write(make_batch(ids, tokens, n_bytes, labels if with_labels else None, "uint16"))
        shards = writer.close()
        rows = [row for shard in shards for row in read_shard(Path(directory) / shard["file"]).to_pylist()]
    keys = ["id", "tokens", "n_bytes"] + (["label"] if with_labels else [])
    assert rows == [dict(zip(keys, doc)) for doc in documents]
    assert sum(s["documents"] for s in shards) == len(documents)
    assert sum(s["tokens"] for s in shards) == sum(len(doc[1]) for doc in documents)


# -- raw input files -----------------------------------------------------------------------------------
SAMPLES = {
    ".txt": b"first paragraph\nstill first\n\nsecond \xc3\xa9t\xc3\xa9\r\n\r\nthird\n",
    ".jsonl": b'{"text": "one", "label": 1}\n{"text": "two \\u00e9", "meta": {"a": [1, 2]}}\n\n{"text": "3"}\n',
    ".json": b'[{"text": "one", "label": "a"},\n "two",\n {"text": "three"}]\n',
    ".csv": b'text,label\n"one, quoted",a\n"multi\nline",b\nplain,\n',
    ".tsv": b"text\tlabel\none\ta\ntwo\tb\n",
}
SUFFIXES = [suffix + gz for suffix in SAMPLES for gz in ("", ".gz")]
read_options = st.builds(
    ReadOptions, split_by=st.sampled_from(["line", "paragraph", "file"]),
    text_field=st.sampled_from(["text", "meta.a.0", "0"]), label_field=st.sampled_from([None, "label"]),
    encoding_errors=st.sampled_from(["strict", "replace", "skip"]), skip_bad_records=st.booleans(),
    max_record_bytes=st.sampled_from([1, 8, 40, 64 * 2**20]))


@st.composite
def input_files(draw):
    """(suffix, content): a valid sample, a mutated one, random bytes or random lines; gzip-compressed
    (whole, cut short, or not at all) for the .gz suffixes."""
    suffix = draw(st.sampled_from(SUFFIXES))
    sample = SAMPLES[suffix.removesuffix(".gz")]
    content = draw(st.sampled_from(["sample", "mutated", "bytes", "lines"]).flatmap(lambda kind: {
        "sample": st.just(sample), "mutated": flips.map(lambda changes: apply_flips(sample, changes)),
        "bytes": st.binary(max_size=400),
        "lines": st.lists(any_text, max_size=8).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    }[kind]))
    if suffix.endswith(".gz"):
        compressed = gzip.compress(content, mtime=0)
        content = draw(st.sampled_from([compressed, compressed[: len(compressed) // 2], content]))
    return suffix, content


@fuzz_settings("reader")
@given(file=input_files(), options=read_options)
@example(file=(".jsonl", b'{"text": "big", "n": ' + b"1" * 5000 + b"}\n"), options=ReadOptions())
@example(file=(".json", b'[{"text": "big", "n": ' + b"1" * 5000 + b"}]"), options=ReadOptions())
def test_any_input_file_reads_or_is_a_user_error(file, options):
    suffix, content = file
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"input{suffix}"
        path.write_bytes(content)
        counts = collections.Counter()
        try:
            for document in iter_documents(str(path), options, counts):
                assert isinstance(document, RawDocument) and isinstance(document.text, str)
                document.text.encode("utf-8")  # no lone surrogate reaches cleaning or the tokenizer
                assert document.label is None or isinstance(document.label, str)
        except UserError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
