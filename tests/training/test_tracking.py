"""--track: the resolved config, every metric with its step, the final artifacts and lineage sent to MLflow (a real
`mlflow server` on 127.0.0.1), wandb (offline) and TensorBoard; a killed and resumed run continues one tracking
run; a tracker that is down or stuck warns once and never stops training."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.errors import Interrupted
from lmkit.stages import pretrain
from lmkit.stages.pretrain_config import PretrainConfig
from lmkit.training import rundir, tracking
from lmkit.training.objectives.language_modeling import CausalLM
from lmkit.training.tracking import Backend, Tracking
from tests.conftest import free_port, invoke_lmkit, sigterm_at_call

FAST = {"seq_len": 32, "micro_batch": 4, "eval_every": 4, "eval_batches": 2, "checkpoint_every": 2,
        "warmup_steps": 2, "lr": 3e-3, "precision": "fp32", "log_every": 1}


def config(dataset, out, **overrides):
    return resolve(PretrainConfig, {}, {"dataset": str(dataset), "out": str(out), **FAST, **overrides})


def killed_and_resumed(dataset, out, monkeypatch, steps=8, kill_at=5, **overrides):
    """A run of ``steps`` steps preempted during step ``kill_at``, then resumed with the same command line."""
    launch = config(dataset, out, max_steps=steps, auto_resume=True, **overrides)
    with monkeypatch.context() as patch:
        patch.setattr(CausalLM, "loss", sigterm_at_call(CausalLM.loss, kill_at))
        with pytest.raises(Interrupted):
            pretrain.run(launch)
    return pretrain.run(launch)


def tracking_ids(checkpoint: Path) -> dict:
    return read_checkpoint(checkpoint).trainer_state().extra[tracking.STATE_KEY]


# -- the flag ----------------------------------------------------------------------------------------------------

def test_track_is_repeatable_and_comma_separated(dataset, tmp_path):
    result = invoke_lmkit("pretrain", str(dataset), "--out", str(tmp_path / "run"), "--track", "tensorboard",
                          "--track", "mlflow,wandb", "--print-config", check=True)
    assert 'track = ["tensorboard", "mlflow", "wandb"]' in result.stdout


def test_an_unknown_tracker_is_one_line_naming_the_choices(dataset, tmp_path):
    result = invoke_lmkit("pretrain", str(dataset), "--out", str(tmp_path / "run"), "--track", "mlflow,neptune")
    assert result.returncode == 1
    assert "--track: 'neptune' is not one of mlflow, wandb, tensorboard" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_extra_is_named_before_the_run_directory_is_touched(dataset, tmp_path, monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    result = invoke_lmkit("pretrain", str(dataset), "--out", str(tmp_path / "run"), "--track", "tensorboard,wandb",
                          "--max-steps", "2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: --track wandb: not installed (pip install 'lmkit[track]')"
    assert not (tmp_path / "run").exists()


# -- the queue and the thread: never stop, never slow ------------------------------------------------------------

class Recording(Backend):
    def __init__(self, name="recording", fail_at=None, gate=None):
        self.name, self.fail_at, self.gate = name, fail_at, gate
        self.records, self.closed = [], None

    def open(self, run_id):
        return run_id or "run-1"

    def sent_until(self):
        return 3  # a reopened run that already holds steps 1-3

    def params(self, params):
        pass

    def tags(self, tags):
        pass

    def files(self, paths):
        pass

    def metrics(self, records):
        if self.gate is not None:
            self.gate.wait()
        for record in records:
            if record["step"] == self.fail_at:
                raise ConnectionError("Connection refused\nsecond line")
            self.records.append(record["step"])

    def close(self, status):
        self.closed = status


def test_a_failing_backend_warns_once_and_the_others_get_everything(capsys):
    failing, working = Recording("failing", fail_at=5), Recording("working")
    tracker = Tracking({"failing": lambda: failing, "working": lambda: working}, {})
    for step in range(1, 101):
        tracker.metrics({"step": step, "loss": 1.0})
    tracker.close()
    assert working.records == list(range(1, 101)) and working.closed == "FINISHED"
    assert failing.records == [] or failing.records[-1] < 5
    assert failing.closed is None
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["warning: tracking: failing failed (metrics: Connection refused); not tracked to failing for "
                        "the rest of this run (metrics.jsonl has every figure)"]
    assert tracker.ids() == {"failing": "run-1", "working": "run-1"}


def test_a_stuck_backend_never_blocks_the_run(capsys):
    gate = threading.Event()  # the backend waits for it forever: a server that hangs
    stuck = Recording("stuck", gate=gate)
    tracker = Tracking({"stuck": lambda: stuck}, {}, queue_size=10)
    for step in range(1, 1001):  # far more than the queue holds: dropped, not waited for
        tracker.metrics({"step": step, "loss": 1.0})
    tracker.close(timeout=0.2)
    err = capsys.readouterr().err
    assert "tracking: gave up after 0 s with" in err and "events unsent" in err
    gate.set()


def test_a_reopened_run_is_not_sent_the_steps_it_holds():
    backend = Recording()
    tracker = Tracking({"recording": lambda: backend}, {"recording": "run-7"})
    for step in range(1, 7):
        tracker.metrics({"step": step, "loss": 1.0})
    tracker.close()
    assert backend.records == [4, 5, 6] and tracker.ids() == {"recording": "run-7"}


class Server:
    """A tracking server's memory, shared by every launch's backend: the runs, their steps, files and status."""

    def __init__(self):
        self.steps, self.files, self.status, self.opened = {}, {}, {}, 0


class Stored(Backend):
    """A backend of the Server in ``Stored.server``, standing in for a real one under a name --track accepts."""

    name = "tensorboard"
    server: Server

    def __init__(self, info):
        self.run_id = ""

    def open(self, run_id):
        self.server.opened += 1
        self.run_id = run_id or f"run-{len(self.server.steps) + 1}"
        self.server.steps.setdefault(self.run_id, [])
        self.server.status[self.run_id] = "RUNNING"
        return self.run_id

    def sent_until(self):
        return max(self.server.steps[self.run_id], default=0)

    def params(self, params):
        pass

    def tags(self, tags):
        pass

    def metrics(self, records):
        self.server.steps[self.run_id] += [r["step"] for r in records if "loss" in r]

    def files(self, paths):
        self.server.files[self.run_id] = sorted(p.name for p in paths)

    def close(self, status):
        self.server.status[self.run_id] = status


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(Stored, "server", Server(), raising=False)
    monkeypatch.setitem(tracking.BACKENDS, "tensorboard", ("json", Stored))
    return Stored.server


def test_a_launch_stopped_before_its_trackers_end_is_finished_by_the_next(dataset, tmp_path, monkeypatch, server):
    from lmkit.training import run

    launch = config(dataset, tmp_path / "run", max_steps=6, checkpoint_every=0, track=["tensorboard"])
    with monkeypatch.context() as patch:  # killed after final/ is committed, before the tracker's last send
        patch.setattr(run, "close_tracking", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            pretrain.run(launch)
    (run_id,) = server.steps
    assert server.status[run_id] == "RUNNING" and run_id not in server.files
    assert not (tmp_path / "run" / rundir.TRACKED_FILE).exists()

    final = pretrain.run(launch)  # up to date: no training, the tracker's end sent
    assert server.steps == {run_id: [1, 2, 3, 4, 5, 6]} and server.status[run_id] == "FINISHED"
    assert server.files[run_id] == ["config.toml", "manifest.json", "metrics.jsonl", "plots.png"]
    assert tracking_ids(final.path) == {"tensorboard": run_id}
    opened = server.opened
    pretrain.run(launch)  # the trackers have the end: nothing to send
    assert server.opened == opened


def test_track_added_to_a_finished_run_sends_it_whole(dataset, tmp_path, server):
    pretrain.run(config(dataset, tmp_path / "run", max_steps=4, checkpoint_every=0))
    assert server.steps == {}
    pretrain.run(config(dataset, tmp_path / "run", max_steps=4, checkpoint_every=0, track=["tensorboard"]))
    assert server.steps == {"run-1": [1, 2, 3, 4]} and server.status["run-1"] == "FINISHED"


# -- MLflow: a real server -----------------------------------------------------------------------------------------

def start_mlflow(root: Path) -> tuple[str, subprocess.Popen]:
    """`mlflow server` on a free port of 127.0.0.1 with its stores under ``root``; waits for /health."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180  # generous: a loaded 2-core machine starts it in 10-60 s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return uri, server
        except OSError:
            time.sleep(0.5)
    stop_mlflow(server)
    raise RuntimeError(f"mlflow server did not start in 180 s: {(root / 'server.log').read_text()[-2000:]}")


def stop_mlflow(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)  # its own session: the server and its workers
        server.wait()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    pytest.importorskip("mlflow")
    uri, server = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop_mlflow(server)


@pytest.mark.slow
def test_a_killed_and_resumed_run_is_one_mlflow_run_with_one_series(dataset, tmp_path, monkeypatch, mlflow_uri):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "resumed")
    final = killed_and_resumed(dataset, tmp_path / "run", monkeypatch, track=["mlflow"])
    run_id = tracking_ids(final.path)["mlflow"]
    assert tracking_ids(rundir.checkpoints(tmp_path / "run")[0])["mlflow"] == run_id  # kept from the first launch

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("resumed")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "lr", "tokens_per_s", "grad_norm", "val_loss", "val_ppl"):  # every figure, one series
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        expected = [(r["step"], r[key]) for r in logged if key in r]
        assert [step for step, _ in history] == [step for step, _ in expected], key
        assert [value for _, value in history] == pytest.approx([value for _, value in expected]), key
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 9))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["max_steps"] == "8"
    assert run.data.params["track"] == "mlflow" and "model.n_layer" in run.data.params
    assert run.data.tags["lmkit.checkpoint.id"] == final.id
    assert run.data.tags["lmkit.input.dataset.id"] == json.loads((dataset / "manifest.json").read_text())["id"]
    names = {f.path for f in client.list_artifacts(run_id)}
    assert {"manifest.json", "config.toml", "metrics.jsonl"} <= names


@pytest.mark.slow
def test_a_server_killed_mid_run_warns_once_and_training_goes_on(tmp_path, capsys):
    pytest.importorskip("mlflow")
    uri, server = start_mlflow(tmp_path)
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        tracker = tracking.start(["mlflow"], tracking.RunInfo("killed", tmp_path, 0), {})
        tracker.metrics({"step": 1, "loss": 2.0})
        deadline = time.monotonic() + 60
        while "mlflow" not in tracker.ids() and time.monotonic() < deadline:
            time.sleep(0.1)
        stop_mlflow(server)  # the server dies mid-run
        for step in range(2, 200):
            tracker.metrics({"step": step, "loss": 1.0})
        tracker.close()
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        stop_mlflow(server)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tracking: mlflow failed (metrics: ")


def test_an_unreachable_server_warns_once_and_the_run_completes(dataset, tmp_path):
    pytest.importorskip("mlflow")
    result = invoke_lmkit("pretrain", str(dataset), "--out", str(tmp_path / "run"), "--track", "mlflow",
                          "--max-steps", "3", "--seq-len", "32", "--micro-batch", "4", "--eval-every", "0",
                          "--precision", "fp32", "--log-every", "1",
                          env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
                               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tracking: mlflow failed (open: "), warnings
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


# -- wandb (offline) and TensorBoard -------------------------------------------------------------------------------

@pytest.mark.slow
def test_wandb_offline_resumes_the_same_run(dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    final = killed_and_resumed(dataset, tmp_path / "run", monkeypatch, steps=4, kill_at=3, track=["wandb"])
    run_id = tracking_ids(final.path)["wandb"]
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-DATE_TIME-ID, and -1 after a second launch within the same second: two launches, one run id
    assert len(runs) == 2 and all(name.split("-")[3] == run_id for name in runs)
    assert all(list((tmp_path / "wandb" / name).glob("*.wandb")) for name in runs)


@pytest.mark.slow
def test_tensorboard_shows_one_series_after_a_resume(dataset, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    killed_and_resumed(dataset, tmp_path / "run", monkeypatch, track=["tensorboard"])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == list(range(1, 9))
    assert [event.step for event in events.Scalars("val_loss")] == [4, 8]


def test_no_tracking_writes_no_tensorboard_events(dataset, tmp_path):
    from tests.conftest import train_tiny

    train_tiny(dataset, tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_finetuning_is_tracked_the_same_way(gpt, instructions, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    final = finetune.run(resolve(FinetuneConfig, {}, {
        "base": str(gpt), "data": str(instructions), "out": str(tmp_path / "sft"), "max_steps": 3, "micro_batch": 4,
        "seq_len": 64, "eval_every": 0, "precision": "fp32", "log_every": 1, "track": ["tensorboard"]})).checkpoint
    events = EventAccumulator(str(tmp_path / "sft" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3]
    assert tracking_ids(final.path) == {"tensorboard": "tensorboard"}
    lineage = events.Tensors("lineage/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"lmkit.input.base.id: {read_checkpoint(gpt).artifact.id}" in lineage
