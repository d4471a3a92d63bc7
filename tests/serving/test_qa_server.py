"""``lmkit serve`` on a question-answering (span) checkpoint: POST /v1/qa through real HTTP on 127.0.0.1
answers as `lmkit generate` does; a missing or empty field is a 400 that names it."""

import json

import pytest

from tests.conftest import run_lmkit

pytest.importorskip("fastapi")
from tests.serving.test_server import Server  # noqa: E402  (after the skip: it needs the serve extra)


def test_qa_endpoint_answers_as_generate_does(qa_checkpoint, qa_file):
    record = json.loads(qa_file.read_text().splitlines()[2])
    expected = run_lmkit("generate", str(qa_checkpoint), "--question", record["question"], "--context",
                         record["context"], check=True).stdout.rstrip("\n")
    server = Server(qa_checkpoint)
    try:
        code, body, _ = server.request("POST", "/v1/qa", {"question": record["question"], "context": record["context"]})
        assert code == 200, body
        assert body["answer"] == expected and record["context"][body["start"]:body["end"]] == expected
        assert body["usage"]["prompt_tokens"] > 0 and isinstance(body["score"], float)
        code, body, _ = server.request("POST", "/v1/qa", {"question": "What is the code?"})
        assert code == 400 and body["error"]["param"] == "context" and "context" in body["error"]["message"]
        code, body, _ = server.request("POST", "/v1/qa", {"question": " ", "context": "x"})
        assert code == 400 and body["error"]["message"] == "question: must be non-empty"
        code, body, _ = server.request("POST", "/v1/completions", {"prompt": "x"})
        assert code == 400 and "use /v1/qa" in body["error"]["message"]
        assert server.request("GET", "/health")[1]["kind"] == "qa"
    finally:
        server.stop()
