"""The task registry: a new kind of model is one module's worth of spec plus its registration, and `lmkit
evaluate`, `lmkit generate` and `lmkit serve` reach it without a line changed elsewhere (as
tests/training/test_run.py does for a toy objective)."""

import http.client
import json
import socket
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from lmkit import tasks
from lmkit.checkpoint import read_checkpoint
from lmkit.cli import app
from lmkit.errors import UserError
from lmkit.evaluation.tasks import TaskOutcome
from lmkit.tasks.base import JSONL, Evaluation, Generation, Route, TaskSpec, load_model, read_examples
from tests.generation import checkpoints

runner = CliRunner()


# -- a toy kind of model: it "copies" its input, each position predicting the token at that position ---------

def copies(model, tokenizer, text: str) -> tuple[str, float]:
    """The tokens the model predicts at each position of ``text`` (decoded), and the share equal to the input."""
    ids = tokenizer.encode(text)
    with torch.no_grad():
        predicted = model(torch.tensor([ids]))[0][0].argmax(-1).tolist()
    return tokenizer.decode(predicted), sum(p == t for p, t in zip(predicted, ids, strict=True)) / len(ids)


def read_texts(path: str, limit: int) -> list[str]:
    texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8") if line.strip()]
    return texts[:limit] if limit else texts


def evaluate_copies(plan, inference, tokenizer, texts) -> TaskOutcome:
    shares = [copies(inference.model, tokenizer, text)[1] for text in texts]
    return TaskOutcome(len(texts), {"copy_accuracy": sum(shares) / len(shares)}, {"method": "argmax per position"})


def answer(loaded, given, config, stream=None) -> list[dict]:
    return [{**record, "copy": copies(loaded.model, loaded.tokenizer, text)[0]}
            for record, text in zip(given.records, given.texts, strict=True)]


def render(records, settings) -> None:
    from lmkit.progress import reporter

    for record in records:
        reporter.write(f"copy: {record['copy']}\n")


def routes(server) -> list[Route]:
    from lmkit.serving.protocol import Body

    class CopyRequest(Body):
        text: str

    async def copy(body: CopyRequest, call) -> dict:
        loaded = call.server.model
        text, share = await call.server.call(lambda: copies(loaded.model, loaded.tokenizer, body.text))
        return {"copy": text, "share": share}

    return [Route("/v1/copy", CopyRequest, copy)]


COPY = TaskSpec(
    "copy", "copying model", lambda checkpoint: checkpoint.objective == "copy",
    (Evaluation("copy", ("copy_accuracy",), JSONL, evaluate_copies, needs="a copying model",
                load=lambda plan, tokenizer: read_examples(plan, read_texts)),),
    load_model, Generation("text", answer, render), endpoints=("/v1/copy",), routes=routes, lm_head=False)


@pytest.fixture
def copier(gpt, tmp_path):
    """A checkpoint of the toy kind (a GPT's weights, objective "copy"), with the toy task registered."""
    checkpoint = read_checkpoint(gpt)
    path = checkpoints.write_model(tmp_path / "copier", checkpoint.build_model(), checkpoint.model_config, "copy",
                                   gpt / "tokenizer")
    tasks.register(COPY)
    try:
        yield path
    finally:
        tasks.TASKS.pop("copy")


def test_registering_a_name_twice_is_an_error(copier):
    with pytest.raises(ValueError, match="task 'copy' is registered twice"):
        tasks.register(COPY)


def test_a_checkpoint_of_no_registered_kind_is_refused_naming_the_kinds(gpt, tmp_path):
    checkpoint = read_checkpoint(gpt)
    path = checkpoints.write_model(tmp_path / "copier", checkpoint.build_model(), checkpoint.model_config, "copy",
                                   gpt / "tokenizer")
    with pytest.raises(UserError, match=r"objective 'copy' is not a kind generate knows \(text: causal language "
                                        r"model; sft: .*; qa: question-answering \(span\) model\)"):
        tasks.for_checkpoint(read_checkpoint(path))


def test_a_toy_task_through_evaluate(copier, tmp_path):
    data = tmp_path / "texts.jsonl"
    texts = ["The for statement", "x = 1", "An exception is raised"]
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    result = runner.invoke(app, ["evaluate", str(copier), str(data), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    loaded = load_model(read_checkpoint(copier), tasks.base.LoadOptions())
    expected = sum(copies(loaded.model, loaded.tokenizer, text)[1] for text in texts) / len(texts)
    assert report["task"] == "copy" and report["examples"] == 3
    assert report["metrics"]["copy_accuracy"] == pytest.approx(expected)
    refused = runner.invoke(app, ["evaluate", str(copier), str(data), "--task", "lm"])
    assert refused.exit_code == 1
    assert "is a copying model without a language-model head; use --task copy" in refused.stderr


def test_a_toy_task_through_generate(copier):
    result = runner.invoke(app, ["generate", str(copier), "The for statement"])
    assert result.exit_code == 0, result.output
    loaded = load_model(read_checkpoint(copier), tasks.base.LoadOptions())
    assert result.stdout == f"copy: {copies(loaded.model, loaded.tokenizer, 'The for statement')[0]}\n"


def test_a_toy_task_through_serve(copier):
    """The app `lmkit serve` builds, under uvicorn on 127.0.0.1, answered over real HTTP."""
    pytest.importorskip("fastapi")
    import uvicorn

    from lmkit.config import resolve
    from lmkit.serving.config import ServeConfig
    from lmkit.stages.serve import build

    asgi, server = build(resolve(ServeConfig, {}, {"checkpoint": str(copier), "compile": False}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    server.engine.start()
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not web.started and time.monotonic() < deadline:
            time.sleep(0.05)

        def post(path: str, body: dict) -> tuple[int, dict]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())

        status, body = post("/v1/copy", {"text": "The for statement"})
        loaded = load_model(read_checkpoint(copier), tasks.base.LoadOptions())
        assert status == 200 and body["copy"] == copies(loaded.model, loaded.tokenizer, "The for statement")[0]
        status, body = post("/v1/completions", {"prompt": "x"})  # another kind's endpoint: named, with this one's
        assert status == 400 and "this server's model is a copy model: use /v1/copy" in body["error"]["message"]
        status, body = post("/v1/copy", {})
        assert status == 400 and body["error"]["param"] == "text"
    finally:
        web.should_exit = True
        thread.join(timeout=10)
        server.engine.stop()
