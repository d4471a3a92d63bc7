"""Experiment tracking (``--track mlflow|wandb|tensorboard``): the run's resolved config as parameters, every
record of metrics.jsonl with its step, the artifacts' ids and lineage as tags, and the final manifest, plot,
config and metrics as files, sent by rank 0 to each chosen backend.

The promise: a tracker never stops or slows training. The loop only puts events on a bounded queue (never
waiting: a full queue drops the event); a background thread sends them. A backend that fails (a server down,
refusing, a bad credential) gets one warning and is dropped for the rest of the launch: metrics.jsonl keeps
every figure. A resumed run continues the same tracking run: its id is kept in the checkpoints' trainer state
(``TrainerState.extra["tracking"]``), and the steps the interrupted launch already sent are not sent twice
(the resumed run recomputes them exactly), so the series stays one.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lmkit.errors import UserError
from lmkit.progress import reporter

EXTRA = "pip install 'lmkit[track]'"
STATE_KEY = "tracking"          # TrainerState.extra[STATE_KEY]: backend name -> its tracking run id
QUEUE_SIZE = 10_000             # events waiting for the thread; beyond, events are dropped (and said so once)
CLOSE_SECONDS = 60.0            # at the end, how long the thread may take to send what is queued
METRICS_PER_SEND = 1000         # MLflow's log_batch takes at most 1000 metrics
OPEN_SECONDS = 10.0             # how long a checkpoint waits, once, for a backend still opening (its id)
SEND_SECONDS = 1.0              # metrics are sent at most this often, batched: fewer requests, less GIL taken


@dataclass(frozen=True)
class RunInfo:
    """What a backend knows of the run it tracks."""

    name: str                   # the run directory's name
    run_dir: Path
    resume_step: int            # the step the run resumes from (0: a fresh run)


class Backend:
    """One tracking backend, called from the tracking thread only. ``open`` starts or reopens the tracking run
    (``run_id``: the id a checkpoint kept) and returns its id."""

    name = ""

    @staticmethod
    def chosen_id() -> str | None:
        """A new run's id chosen before opening it (known at once, for the first checkpoint); None: the backend
        assigns it when the run opens."""
        return None

    def open(self, run_id: str | None) -> str:
        raise NotImplementedError

    def sent_until(self) -> int:
        """The last step the (reopened) run already holds: steps up to it are not sent again."""
        return 0

    def params(self, params: dict[str, str]) -> None:
        raise NotImplementedError

    def metrics(self, records: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def tags(self, tags: dict[str, str]) -> None:
        raise NotImplementedError

    def files(self, paths: list[Path]) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        """``status``: FINISHED, KILLED (a stop was requested) or FAILED."""
        raise NotImplementedError


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record's figures, without its step."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowBackend(Backend):
    """MLflow through ``MlflowClient`` (thread-safe, unlike the fluent API's active run): the server or store in
    MLFLOW_TRACKING_URI, the experiment in MLFLOW_EXPERIMENT_NAME (default ``lmkit``)."""

    name = "mlflow"
    PARAM_CHARS = 500           # the shortest limit MLflow stores have had for a parameter's value

    def __init__(self, info: RunInfo):
        # A server that is down must fail fast, not after MLflow's default retries (minutes of backoff):
        # the user's own settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout holds lmkit's results
        from mlflow.tracking import MlflowClient

        self.info, self.client, self.run_id = info, MlflowClient(), ""
        self.existing: dict[str, str] = {}

    def open(self, run_id: str | None) -> str:
        if run_id:
            run = self.client.get_run(run_id)
            self.client.update_run(run_id, status="RUNNING")
            self.run_id, self.existing = run_id, dict(run.data.params)
            self._metric_keys = list(run.data.metrics)
            return run_id
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "lmkit")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=self.info.name).info.run_id
        self._metric_keys = []
        return self.run_id

    def sent_until(self) -> int:
        return max((m.step for key in self._metric_keys for m in self.client.get_metric_history(self.run_id, key)),
                   default=0)

    def params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        params = {k: v[:self.PARAM_CHARS] for k, v in params.items()}
        new = [Param(k, v) for k, v in params.items() if k not in self.existing]
        # A parameter cannot change in MLflow: what a resumed launch changed (--max-steps ...) becomes a tag.
        changed = [RunTag(f"resumed.{k}", v) for k, v in params.items() if k in self.existing and self.existing[k] != v]
        for start in range(0, len(new), 100):  # log_batch takes at most 100 parameters
            self.client.log_batch(self.run_id, params=new[start:start + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def metrics(self, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, v, stamp, r["step"]) for r in records for k, v in numeric(r).items()]
        for start in range(0, len(batch), METRICS_PER_SEND):
            self.client.log_batch(self.run_id, metrics=batch[start:start + METRICS_PER_SEND])

    def tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbBackend(Backend):
    """Weights & Biases: the project in WANDB_PROJECT (default ``lmkit``); WANDB_MODE=offline writes under
    WANDB_DIR for a later ``wandb sync``."""

    name = "wandb"

    def __init__(self, info: RunInfo):
        import wandb

        self.info, self.wandb, self.run = info, wandb, None

    @staticmethod
    def chosen_id() -> str | None:
        return uuid.uuid4().hex[:8]

    def open(self, run_id: str | None) -> str:
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "lmkit"), name=self.info.name,
                                   id=run_id or self.chosen_id(), resume="allow",
                                   dir=os.environ.get("WANDB_DIR"))
        return self.run.id

    def sent_until(self) -> int:
        return max(self.run.step - 1, 0)  # wandb counts the next step; it refuses steps below it anyway

    def params(self, params: dict[str, str]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def metrics(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.run.log(numeric(record), step=record["step"])

    def tags(self, tags: dict[str, str]) -> None:
        # wandb's tags are short labels (64 characters): the full values go to the run's summary.
        self.run.tags = tuple(self.run.tags or ()) + tuple(f"{k}={v}"[:64] for k, v in tags.items())
        self.run.summary.update(tags)

    def files(self, paths: list[Path]) -> None:
        for path in paths:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class TensorBoardBackend(Backend):
    """TensorBoard event files in RUN/tensorboard (``tensorboard --logdir RUN``). A resumed run purges the
    events the interrupted launch wrote after its checkpoint (SummaryWriter's purge_step): one series."""

    name = "tensorboard"

    @staticmethod
    def chosen_id() -> str | None:
        return "tensorboard"  # the event files of the run directory

    def __init__(self, info: RunInfo):
        from torch.utils.tensorboard import SummaryWriter

        self.info, self.writer_class, self.writer = info, SummaryWriter, None

    def open(self, run_id: str | None) -> str:
        purge = self.info.resume_step + 1 if self.info.resume_step else None
        self.writer = self.writer_class(log_dir=str(self.info.run_dir / "tensorboard"), purge_step=purge)
        return "tensorboard"

    def params(self, params: dict[str, str]) -> None:
        table = "| setting | value |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in params.items())
        self.writer.add_text("config", table, self.info.resume_step)

    def metrics(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            for key, value in numeric(record).items():
                self.writer.add_scalar(key, value, record["step"])

    def tags(self, tags: dict[str, str]) -> None:
        self.writer.add_text("lineage", "\n\n".join(f"{k}: {v}" for k, v in tags.items()), self.info.resume_step)

    def files(self, paths: list[Path]) -> None:
        pass  # the files sit beside the event files, in the run directory

    def close(self, status: str) -> None:
        self.writer.close()


# name -> (the module that must import, the backend); options.TRACKERS spells the names for --help.
BACKENDS: dict[str, tuple[str, Callable[[RunInfo], Backend]]] = {
    "mlflow": ("mlflow", MlflowBackend),
    "wandb": ("wandb", WandbBackend),
    "tensorboard": ("tensorboard", TensorBoardBackend),
}


def check_installed(names: list[str]) -> None:
    """The one-line error for --track values whose package is missing (before the run directory is touched)."""
    missing = [name for name in dict.fromkeys(names) if importlib.util.find_spec(BACKENDS[name][0]) is None]
    if missing:
        raise UserError(f"--track {','.join(missing)}: not installed ({EXTRA})")


class Tracking:
    """The chosen backends behind one bounded queue and one thread. Every method returns at once. The backends
    are built here, before training (importing mlflow or wandb takes seconds of the interpreter's lock, which a
    thread would take from the first training steps), and opened on the thread (the network)."""

    def __init__(self, factories: dict[str, Callable[[], Backend]], run_ids: dict[str, str],
                 queue_size: int = QUEUE_SIZE, send_seconds: float = SEND_SECONDS,
                 reopened: dict[str, str] | None = None):
        self._factories, self._run_ids, self._send_seconds = factories, dict(run_ids), send_seconds
        self._reopened = dict(run_ids if reopened is None else reopened)  # the runs a checkpoint named
        self._opened = threading.Event()  # every backend opened, or failed to
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._failed: set[str] = set()
        self._dropped = 0
        self._backends = [b for b in (self._call(name, "start", factory) for name, factory in factories.items())
                          if b is not None]
        self._thread = threading.Thread(target=self._work, name="lmkit-tracking", daemon=True)
        self._thread.start()

    # -- what the run calls (the training thread) -------------------------------------------------------------

    def ids(self) -> dict[str, str]:
        """Backend name -> tracking run id, for the checkpoints (a backend not yet opened is missing)."""
        with self._lock:
            return dict(self._run_ids)

    def remember(self, extra: dict[str, Any], wait: float = OPEN_SECONDS) -> None:
        """Keep the tracking run ids in a trainer state's ``extra``: a resumed run reopens them. A backend still
        opening its run is waited for (at most ``wait`` seconds, once): a checkpoint without the id would start
        a second tracking run on resume."""
        if set(self._factories) - set(self.ids()):
            self._opened.wait(wait)
        extra[STATE_KEY] = {**extra.get(STATE_KEY, {}), **self.ids()}

    def params(self, params: dict[str, Any]) -> None:
        self._put("params", {k: _text(v) for k, v in params.items()})

    def metrics(self, record: dict[str, Any]) -> None:
        self._put("metrics", record)

    def tags(self, tags: dict[str, Any]) -> None:
        self._put("tags", {k: _text(v) for k, v in tags.items()})

    def files(self, paths: list[Path]) -> None:
        self._put("files", [p for p in paths if p.is_file()])

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Send a finished run's records, waiting for room in the queue (nothing trains meanwhile); the steps a
        reopened tracking run holds are skipped as always."""
        for record in records:
            self._queue.put(("metrics", record))

    def close(self, status: str = "FINISHED", timeout: float = CLOSE_SECONDS) -> list[str]:
        """Send what is queued (for at most ``timeout`` seconds), then end the tracking runs; returns the backends
        that got everything and were closed."""
        try:
            self._queue.put(("close", status), timeout=timeout)
        except queue.Full:
            pass  # the thread is stuck in a backend: the warning below says what was lost
        self._thread.join(timeout)
        if self._thread.is_alive():
            reporter.warn(f"tracking: gave up after {timeout:.0f} s with {self._queue.qsize():,} events unsent "
                          "(metrics.jsonl has every figure)")
            return []
        if self._dropped:
            reporter.warn(f"tracking: {self._dropped:,} events dropped while the tracker fell behind "
                          "(metrics.jsonl has every figure)")
            return []
        return [backend.name for backend in self._backends if backend.name not in self._failed]

    def _put(self, kind: str, payload: Any) -> None:
        try:
            self._queue.put_nowait((kind, payload))
        except queue.Full:  # never wait for a slow tracker
            self._dropped += 1

    # -- the tracking thread ----------------------------------------------------------------------------------

    def _work(self) -> None:
        backends, sent_until = self._backends, {}
        for backend in backends:
            sent_until[backend.name] = self._call(backend.name, "open", self._open, backend.name, backend) or 0
        self._opened.set()
        pending, last_send = None, 0.0
        while True:
            kind, payload = pending or self._queue.get()
            pending = None
            live = [b for b in backends if b.name not in self._failed]
            if kind == "close":
                for backend in live:
                    self._call(backend.name, "close", backend.close, payload)
                return
            if kind != "metrics":
                for backend in live:
                    self._call(backend.name, kind, getattr(backend, kind), payload)
                continue
            time.sleep(max(0.0, last_send + self._send_seconds - time.monotonic()))  # (the GIL is free meanwhile)
            last_send = time.monotonic()
            records = [payload]  # and what else is queued, in one send
            while len(records) < METRICS_PER_SEND:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item[0] != "metrics":
                    pending = item
                    break
                records.append(item[1])
            for backend in live:
                fresh = [r for r in records if r["step"] > sent_until[backend.name]]
                if fresh:
                    self._call(backend.name, "metrics", backend.metrics, fresh)

    def _open(self, name: str, backend: Backend) -> int:
        """Open the backend's run; the last step it holds when it reopened one."""
        reopened = self._reopened.get(name)
        run_id = backend.open(self._run_ids.get(name))
        with self._lock:
            self._run_ids[name] = run_id
        return backend.sent_until() if reopened else 0

    def _call(self, name: str, what: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001 (any failure of a tracker: warned once, training goes on)
            self._failed.add(name)
            text = str(exc).strip()
            first = text.splitlines()[0][:200] if text else type(exc).__name__
            reporter.warn(f"tracking: {name} failed ({what}: {first}); not tracked to {name} for the rest of "
                          "this run (metrics.jsonl has every figure)")
            return None


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def start(names: list[str], info: RunInfo, run_ids: dict[str, str]) -> Tracking | None:
    """Tracking to the backends ``names`` (None when there are none), reopening the runs in ``run_ids``."""
    names = list(dict.fromkeys(names))
    if not names:
        return None
    chosen = {name: BACKENDS[name][1].chosen_id() for name in names if name not in run_ids}
    return Tracking({name: (lambda name=name: BACKENDS[name][1](info)) for name in names},
                    {**{k: v for k, v in chosen.items() if v is not None}, **run_ids}, reopened=run_ids)
