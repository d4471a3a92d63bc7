"""``lmkit serve`` driven as users drive it: the real command in a subprocess on 127.0.0.1, the openai
client, lm-evaluation-harness's local-completions, raw HTTP for bad requests, and bounded load."""

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import run_lmkit

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, checkpoint, *args, env=None, quiet=False, compile=False):
        """``compile``: the default start-up compile is left out, except where a test is about it."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lmkit", *(["--quiet"] if quiet else []), "serve", str(checkpoint), "--port",
             str(self.port), "--compile" if compile else "--no-compile", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NO_COLOR": "1", **(env or {})})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"lmkit serve exited {self.process.returncode}: {self.process.stderr.read()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)  # not listening yet, or still loading (503): ask again shortly, not in a busy loop
        raise AssertionError("lmkit serve did not answer /health in 90 s")

    def request(self, method, path, body=None, headers=None, raw: bytes | None = None, timeout=60, chunks=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if chunks is not None:  # a body without Content-Length (Transfer-Encoding: chunked)
            data = iter(chunks)
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})},
                           encode_chunked=chunks is not None)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        headers_ = {k.lower(): v for k, v in response.headers.items()}
        return response.status, json.loads(payload) if payload.startswith(b"{") else payload, headers_

    def client(self, key="unused"):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err


@pytest.fixture(scope="module")
def text_server(gpt):
    server = Server(gpt, "--max-tokens", "64")
    yield server
    server.stop()


def test_completions_through_the_openai_client_equal_lmkit_generate(text_server, gpt):
    client = text_server.client()
    assert [m.id for m in client.models.list().data] == ["run"]
    answer = client.completions.create(model="run", prompt="The for statement", max_tokens=12, temperature=0)
    expected = run_lmkit("generate", str(gpt), "The for statement", "--max-new-tokens", "12", "--temperature", "0",
                         check=True).stdout
    assert answer.choices[0].text + "\n" == expected  # generate ends its output with a newline
    assert answer.usage.completion_tokens <= 12 and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


@pytest.mark.slow
def test_a_compiled_server_answers_as_the_eager_one(text_server, gpt):
    # The start-up compile (the default where torch can compile) decodes the same greedy tokens.
    compiled = Server(gpt, "--max-tokens", "64", compile=True)
    try:
        for prompt in ("The for statement", ["Classes are", "A module is a file"]):
            ours = compiled.client().completions.create(model="run", prompt=prompt, max_tokens=16, temperature=0)
            eager = text_server.client().completions.create(model="run", prompt=prompt, max_tokens=16, temperature=0)
            assert [c.text for c in ours.choices] == [c.text for c in eager.choices]
    finally:
        returncode, err = compiled.stop()
    assert "compiling the model before serving" in err and "compiled in" in err


def test_seeds_reproduce_n_samples_and_streaming(text_server):
    client = text_server.client()
    one = client.completions.create(model="run", prompt=["Classes are", "A module"], max_tokens=8, temperature=1.0,
                                    seed=7, n=3)
    again = client.completions.create(model="run", prompt=["Classes are", "A module"], max_tokens=8, temperature=1.0,
                                      seed=7, n=3)
    texts = [c.text for c in sorted(one.choices, key=lambda c: c.index)]
    assert len(texts) == 6 and texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    assert len(set(texts[:3])) > 1  # the n samples of a prompt differ
    whole = client.completions.create(model="run", prompt="The for statement", max_tokens=10, temperature=0)
    pieces = [chunk.choices[0].text for chunk in client.completions.create(
        model="run", prompt="The for statement", max_tokens=10, temperature=0, stream=True)]
    assert "".join(pieces) == whole.choices[0].text


def test_echo_returns_a_logprob_for_every_prompt_and_generated_token(text_server, dataset):
    from lmkit.tokenizer import Tokenizer

    prompt = "The function returns a value"
    tokens = Tokenizer.from_artifact(dataset / "tokenizer").encode(prompt)
    status, body, _ = text_server.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 0,
                                                                       "echo": True, "logprobs": 2})
    assert status == 200
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(tokens) and all(v < 0 for v in logprobs["token_logprobs"])
    assert all(len(top) == 2 for top in logprobs["top_logprobs"]) and body["choices"][0]["text"] == prompt
    status, body, _ = text_server.request("POST", "/v1/completions", {"prompt": tokens, "max_tokens": 1,
                                                                       "echo": True, "logprobs": 1,
                                                                       "temperature": 0})
    values = body["choices"][0]["logprobs"]["token_logprobs"]
    assert len(values) == len(tokens) + 1 and values[:len(tokens)] == pytest.approx(logprobs["token_logprobs"])
    status, body, _ = text_server.request("POST", "/v1/completions", {"prompt": tokens, "max_tokens": 3,
                                                                       "logprobs": 0, "temperature": 0})
    generated = body["choices"][0]["logprobs"]  # without echo: the completion's tokens only
    assert len(generated["tokens"]) == len(generated["token_logprobs"]) == body["usage"]["completion_tokens"]


def test_lm_eval_local_completions_equals_the_in_process_adapter(text_server, gpt, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import lm_eval
    import torch

    from lmkit.checkpoint import read_checkpoint
    from lmkit.evaluation import harness
    from lmkit.evaluation.scoring import Inference
    from lmkit.tokenizer import Tokenizer
    from tests.evaluation.helpers import write_tasks

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    tasks = write_tasks(tmp_path / "tasks")
    manager = harness.task_manager(str(tasks))
    checkpoint = read_checkpoint(gpt)
    window = checkpoint.model_config.block_size - 1
    local = harness.make_lm(Inference(checkpoint.inference_model(), torch.device("cpu"), "fp32", 8),
                            Tokenizer.from_artifact(checkpoint.tokenizer_path), window, window, None)
    ours = harness.run_tasks(local, manager, ["tiny_choice"], limit=0, seed=0)["metrics"]
    remote = lm_eval.simple_evaluate(
        model="local-completions", tasks=["tiny_choice"], task_manager=manager, bootstrap_iters=0,
        model_args={"model": "run", "base_url": f"{text_server.url}/v1/completions", "tokenizer_backend": "remote",
                    "tokenized_requests": True, "max_length": window, "num_concurrent": 1, "max_retries": 1})
    theirs = harness.flatten_results(remote["results"])
    assert theirs["tiny_choice/acc"] == pytest.approx(ours["tiny_choice/acc"], abs=1e-6)
    assert theirs["tiny_choice/acc_norm"] == pytest.approx(ours["tiny_choice/acc_norm"], abs=1e-6)


@pytest.mark.parametrize("body,status,field", [
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**6}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ({"prompt": 12}, 400, "prompt"),
    ({"prompt": "word " * 2000}, 400, None),     # longer than the context
    ({"max_tokens": 3}, 400, "prompt"),           # no prompt
    ({"prompt": ["x"] * 3, "n": 16}, 400, "prompt"),  # 48 completions, more than one batch (--max-batch 32)
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, None),  # chat on a model that is not sft
])
def test_bad_requests_are_4xx_json_and_the_server_keeps_serving(text_server, body, status, field):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    code, answer, _ = text_server.request("POST", path, body)
    assert code == status, answer
    assert answer["error"]["message"] and "Traceback" not in answer["error"]["message"]
    assert ".py" not in answer["error"]["message"] and "lmkit/" not in answer["error"]["message"]
    if field:
        assert answer["error"]["param"].startswith(field)
    assert text_server.request("GET", "/health")[0] == 200


def test_malformed_json_and_a_100_mb_body(text_server):
    code, answer, _ = text_server.request("POST", "/v1/completions", raw=b'{"prompt": "x",')
    assert code == 400 and "not valid JSON" in answer["error"]["message"]
    code, answer, _ = text_server.request("POST", "/v1/completions", raw=b"x" * (100 * 2**20))
    assert code == 413 and "larger than the server's limit" in answer["error"]["message"]
    code, answer, _ = text_server.request("POST", "/v1/completions", chunks=[b"x" * 2**19] * 6)  # 3 MB, chunked
    assert code == 413 and "larger than the server's limit" in answer["error"]["message"]
    code, answer, _ = text_server.request("POST", "/v1/completions", chunks=[b'{"prompt": "x",', b' "max_tokens": 2}'])
    assert code == 200 and answer["usage"]["completion_tokens"] <= 2  # a small chunked body is read whole
    assert text_server.request("GET", "/health")[0] == 200


def test_32_concurrent_clients_times_20_requests_without_an_error(text_server):
    def client_loop(k):
        codes = []
        for i in range(20):
            code, body, _ = text_server.request("POST", "/v1/completions",
                                                {"prompt": f"Request {k} {i}", "max_tokens": 4, "temperature": 0})
            codes.append(code)
        return codes
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        codes = [c for result in pool.map(client_loop, range(32)) for c in result]
    assert codes == [200] * 640


def test_api_key_queue_limit_and_graceful_sigterm(gpt):
    server = Server(gpt, "--max-queue", "2", "--max-batch", "1", "--max-tokens", "200", env={"LMKIT_API_KEY": "s3"})
    try:
        assert server.request("GET", "/health")[0] == 200  # open, for load balancers
        code, body, _ = server.request("POST", "/v1/completions", {"prompt": "x"})
        assert code == 401 and body["error"]["type"] == "authentication_error"
        code, _, _ = server.request("POST", "/v1/completions", {"prompt": "x"}, {"Authorization": "Bearer wrong"})
        assert code == 401
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").completions.create(model="run", prompt="x", max_tokens=1)
        assert server.client("s3").completions.create(model="run", prompt="x", max_tokens=2).choices

        def slow(_):
            return server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 200, "temperature": 0},
                                  {"Authorization": "Bearer s3"})
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(slow, range(12)))
        codes = [code for code, _, _ in results]
        assert codes.count(503) >= 1 and set(codes) == {200, 503}, codes
        refused = next(headers for code, _, headers in results if code == 503)
        assert refused.get("retry-after") == "1"
        # SIGTERM with a request in flight: it completes, then the server exits 143.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(slow, 0)
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            code, body, _ = pending.result(timeout=60)
        assert code == 200 and body["choices"][0]["text"]
        returncode, err = server.stop()
        assert returncode == 143 and "POST /v1/completions 200" in err
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sft(gpt, instructions, tmp_path_factory):
    from lmkit.config import resolve
    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    values = {"base": str(gpt), "data": str(instructions), "out": str(tmp_path_factory.mktemp("sft") / "run"),
              "max_steps": 2, "micro_batch": 4, "eval_every": 0, "precision": "fp32"}
    return finetune.run(resolve(FinetuneConfig, {}, values)).checkpoint.path


def test_chat_on_an_sft_checkpoint_streams_and_equals_generate(sft):
    server = Server(sft)
    try:
        client = server.client()
        answer = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "First word of: x"}],
                                                max_tokens=8, temperature=0)
        expected = run_lmkit("generate", str(sft), "First word of: x", "--max-new-tokens", "8", "--temperature", "0",
                             check=True).stdout
        assert answer.choices[0].message.content + "\n" == expected  # generate ends its output with a newline
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="run", messages=[{"role": "user", "content": "First word of: x"}], max_tokens=8, temperature=0,
            stream=True))
        assert streamed == answer.choices[0].message.content
    finally:
        server.stop()


def test_fill_mask_and_classify_endpoints(bert, labeled, tmp_path):
    from lmkit.config import resolve
    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    server = Server(bert, quiet=True)
    try:
        code, body, _ = server.request("POST", "/v1/fill-mask", {"input": "The [MASK] returns a value.", "top_k": 3})
        assert code == 200 and len(body["data"][0]["masks"][0]) == 3
        assert server.request("POST", "/v1/completions", {"prompt": "x"})[0] == 400  # not a text model
    finally:
        _, err = server.stop()
    assert "/v1/fill-mask" not in err  # lmkit --quiet serve: no request log
    values = {"base": str(bert), "data": str(labeled), "out": str(tmp_path / "clf"), "max_steps": 2,
              "micro_batch": 4, "eval_every": 0, "precision": "fp32"}
    classifier = finetune.run(resolve(FinetuneConfig, {}, values)).checkpoint.path
    server = Server(classifier)
    try:
        code, body, _ = server.request("POST", "/v1/classify", {"input": ["lower case text", "UPPER CASE TEXT"]})
        assert code == 200 and [row["index"] for row in body["data"]] == [0, 1]
        assert set(body["data"][0]["probabilities"]) == set(body["labels"]) == {"lower", "upper"}
        assert sum(body["data"][0]["probabilities"].values()) == pytest.approx(1.0)
        code, body, _ = server.request("POST", "/v1/classify", {"input": "x", "text_pair": "y"})
        assert code == 400 and body["error"]["param"] == "text_pair"
        assert "reads single texts" in body["error"]["message"]
    finally:
        server.stop()


def test_a_pair_classifier_classifies_text_pairs_and_names_a_missing_one(pair_classifier):
    server = Server(pair_classifier)
    try:
        code, body, _ = server.request("POST", "/v1/classify", {"input": ["a text", "another"],
                                                                "text_pair": ["its pair", "a second"]})
        assert code == 200 and [row["index"] for row in body["data"]] == [0, 1] and body["labels"] == ["other", "same"]
        assert body["data"][0]["label"] in body["labels"] and body["usage"]["prompt_tokens"] > 0
        code, single, _ = server.request("POST", "/v1/classify", {"input": "a text", "text_pair": "its pair"})
        assert code == 200 and single["data"][0]["probabilities"] == pytest.approx(body["data"][0]["probabilities"])
        for request, message in (({"input": "a text"}, "text_pair: required: this server's classifier reads pairs"),
                                 ({"input": ["a", "b"], "text_pair": ["c"]}, "text_pair: give one second text per "
                                                                             "input (2)"),
                                 ({"input": "a", "text_pair": " "}, "text_pair: every text must be non-empty")):
            code, body, _ = server.request("POST", "/v1/classify", request)
            assert code == 400 and body["error"]["param"] == "text_pair"
            assert body["error"]["message"].startswith(message)
    finally:
        server.stop()


def test_a_missing_extra_and_bad_flags_are_named(gpt, monkeypatch):
    from lmkit.config import resolve
    from lmkit.errors import ConfigError, UserError
    from lmkit.serving.config import ServeConfig
    from lmkit.stages.serve import run as serve

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if lmkit[serve] were not installed
    with pytest.raises(UserError, match=r"needs FastAPI, uvicorn and prometheus_client; install lmkit\[serve\]"):
        serve(resolve(ServeConfig, {}, {"checkpoint": str(gpt)}))
    with pytest.raises(ConfigError) as info:
        resolve(ServeConfig, {}, {"checkpoint": str(gpt), "port": 0, "timeout": "soon", "max_body": "big"})
    text = str(info.value)
    assert "--port: must be in 1..65535" in text and "--timeout: not a duration" in text and "--max-body" in text


def test_a_request_over_the_timeout_is_a_504_and_the_server_goes_on(gpt):
    server = Server(gpt, "--timeout", "1ms")  # no forward pass finishes in a millisecond
    try:
        code, body, _ = server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 64})
        assert code == 504 and "timeout" in body["error"]["message"]
        assert server.request("GET", "/health")[0] == 200
    finally:
        server.stop()
