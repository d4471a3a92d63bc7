"""`lmkit preprocess --executor ray`: the same dataset, byte for byte, as --executor local, on a local Ray of
2 CPUs that these tests start and stop; a lost worker is retried without duplicating documents."""

import json
import random
import socket

import pytest

from lmkit import artifacts
from lmkit.config import resolve
from lmkit.errors import UserError
from lmkit.stages import preprocess
from lmkit.stages.preprocess_config import PreprocessConfig
from tests.conftest import block_imports, paragraphs, run_lmkit


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four text files and a labeled JSONL, with exact and near duplicates across files."""
    root = tmp_path_factory.mktemp("ray-corpus")
    rng = random.Random(0)
    docs = paragraphs(400)
    docs += docs[:30] + [doc.replace(" ", "  ", 1).replace(".", "!", 1) + " Indeed." for doc in docs[30:60]]
    rng.shuffle(docs)
    (root / "text").mkdir()
    for index in range(4):
        (root / "text" / f"part-{index}.txt").write_text("\n\n".join(docs[index::4]) + "\n")
    (root / "labeled").mkdir()
    records = [json.dumps({"text": doc, "label": ["a", "b", "c"][i % 3]}) + "\n" for i, doc in enumerate(docs)]
    for index in range(3):
        (root / "labeled" / f"part-{index}.jsonl").write_text("".join(records[index:360:3]))
    (root / "validation.jsonl").write_text("".join(records[360:]))
    (root / "pairs").mkdir()
    pairs = [{"text": docs[i], "pair": docs[(i * 7 + 1) % 300], "label": "ab"[i % 2]} for i in range(200)]
    pairs += pairs[:10] + [{**pair, "text": pair["text"] + " Indeed."} for pair in pairs[10:20]]
    rng.shuffle(pairs)
    for index in range(2):
        (root / "pairs" / f"part-{index}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[index::2]))
    return root


def build(inputs, out, **settings):
    values = {"inputs": [str(p) for p in inputs], "out": str(out), "vocab_size": 400, "workers": 2, **settings}
    return preprocess.run(resolve(PreprocessConfig, {}, values))


def assert_same_dataset(local, ray):
    assert local.id == ray.id
    files = sorted(local.manifest["files"])
    assert files == sorted(ray.manifest["files"])
    assert artifacts.load(local.path / "tokenizer").id == artifacts.load(ray.path / "tokenizer").id
    for name in files + ["tokenizer/tokenizer.model"]:
        if not name.endswith("manifest.json"):  # the tokenizer's: its time of writing differs, its id does not
            assert (local.path / name).read_bytes() == (ray.path / name).read_bytes(), name
    timing = {"seconds", "mb_per_s", "tokens_per_s", "phase_seconds"}
    assert ({k: v for k, v in local.stats.items() if k not in timing}
            == {k: v for k, v in ray.stats.items() if k not in timing})


def test_the_command_starts_ray_and_writes_what_local_writes(corpus, tmp_path):
    # first in the module: no Ray runs in this process yet, so the command starts (and stops) its own
    local = run_lmkit("preprocess", str(corpus / "text"), "--out", str(tmp_path / "local"), "--vocab-size", "400",
                      "--workers", "2", check=True)
    on_ray = run_lmkit("preprocess", str(corpus / "text"), "--out", str(tmp_path / "ray"), "--vocab-size", "400",
                       "--workers", "2", "--executor", "ray", check=True)
    # The flag, not the default, starts Ray: Ray logs its start ("Started a local Ray instance"), the local run
    # never mentions Ray.
    assert "Ray" in on_ray.stderr and "Ray" not in local.stderr
    # Ray's notice about the token authentication of the Ray it starts is not printed into the output (it was, on
    # every start with Ray 2.60); the Ray is private to the run.
    assert "Token authentication" not in on_ray.stderr and "authentication token" not in on_ray.stderr
    assert_same_dataset(artifacts.load(tmp_path / "local"), artifacts.load(tmp_path / "ray"))


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray with 2 CPUs for this module; the first map task of each run dies once (a lost worker)."""
    import ray

    faults = tmp_path_factory.mktemp("ray-faults")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"LMKIT_RAY_FAULT_DIR": str(faults)}})
    yield faults
    ray.shutdown()


@pytest.mark.parametrize("inputs,settings", [
    (["text"], {}),
    (["labeled"], {"label_field": "label", "language_id": True, "near_dedup_threshold": 0.7, "test_fraction": 0.1,
                   "shard_size": "8KB", "val_inputs": "validation.jsonl"}),
    (["text"], {"dedup": False, "near_dedup": False}),
    (["pairs"], {"text_pair_field": "pair", "label_field": "label"}),
], ids=["text", "labels-languages-shards", "no-dedup", "pairs"])
def test_ray_output_is_byte_identical_to_local_despite_a_lost_worker(corpus, tmp_path, ray_cluster, inputs, settings):
    if "val_inputs" in settings:
        settings = {**settings, "val_inputs": [str(corpus / settings["val_inputs"])]}
    faults_before = len(list(ray_cluster.iterdir()))
    local = build([corpus / name for name in inputs], tmp_path / "local", **settings)
    ray = build([corpus / name for name in inputs], tmp_path / "ray", executor="ray", **settings)
    assert len(list(ray_cluster.iterdir())) == faults_before + 1  # a worker died, and its task was retried
    assert_same_dataset(local, ray)
    if settings.get("dedup", True):
        assert ray.stats["dropped"]["exact_duplicate"] > 0 and ray.stats["dropped"]["near_duplicate"] > 0


def test_a_bad_record_stops_the_ray_run_naming_its_line_and_writes_nothing(tmp_path, ray_cluster):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": text}) + "\n" for text in paragraphs(50)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(UserError, match=f"{bad}:2"):
        build([good, bad], tmp_path / "out", executor="ray")
    assert not (tmp_path / "out").exists()


def test_without_the_extra_the_error_names_it(corpus, tmp_path, monkeypatch):
    block_imports(monkeypatch, "ray")
    with pytest.raises(UserError, match=r"--executor ray: needs Ray; install it with pip install 'lmkit\[ray\]'"):
        build([corpus / "text"], tmp_path / "out", executor="ray")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_address_is_refused_at_once(corpus, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError, match=f"--address 127.0.0.1:{port}: no Ray cluster answers there"):
        build([corpus / "text"], tmp_path / "out", executor="ray", address=f"127.0.0.1:{port}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings,message", [
    ({"address": "10.0.0.1:6379"}, "--address: joins a Ray cluster; add --executor ray"),
    ({"executor": "ray", "inputs": ["-"]}, r"INPUTS: '-' \(stdin\) is read by this process"),
])
def test_ray_flags_are_checked(tmp_path, settings, message):
    from lmkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        resolve(PreprocessConfig, {}, {"inputs": ["x.txt"], "out": str(tmp_path / "out"), **settings})
