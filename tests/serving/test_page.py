"""The chat page of ``lmkit serve`` (GET /): one self-contained file served with a strict Content-Security-Policy,
used in a real browser (headless chromium over the DevTools protocol, tests/serving/chromium.py): a typed message's
streamed reply equals what the API answers to the same greedy request, the conversation's earlier turns included,
with the API key typed into the page; markup in a user's input or in a model's reply shows as text."""

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from tests.serving.chromium import Browser, find_chromium
from tests.serving.test_server import Server

pytest.importorskip("fastapi")

KEY = "page-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MARKUP = '<img src=x onerror="window.pwned = 1"><script>window.pwned = 2</script>'


@pytest.fixture(scope="module")
def chat_server(chat_model):
    server = Server(chat_model, "--max-tokens", "64", "--api-key", KEY, quiet=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium): the chat page's browser tests need one")
    pytest.importorskip("websocket", reason="the browser tests speak the DevTools protocol with websocket-client")
    browser = Browser(executable, tmp_path_factory.mktemp("chromium"))
    yield browser
    browser.close()


def open_page(browser, server, **settings):
    """The server's page, ready, with ``settings`` (field id: value) filled in."""
    page = browser.page()
    page.goto(server.url + "/")
    page.wait_for("document.getElementById('status').textContent === 'ready'")
    for field, value in settings.items():
        page.evaluate(f"document.getElementById({json.dumps(field)}).value = {json.dumps(str(value))}")
    return page


def last_reply(page) -> dict:
    """The last model message once it has ended: its state, text, note and timings line."""
    page.wait_for("(m => m && m.dataset.state !== 'streaming')([...document.querySelectorAll('.msg.assistant')]"
                  ".pop())")
    return page.evaluate("""(() => { const m = [...document.querySelectorAll('.msg.assistant')].pop();
        const text = (selector) => (m.querySelector(selector) || {}).textContent || null;
        return {state: m.dataset.state, body: text('.body'), note: text('.note'), meta: text('.meta')}; })()""")


def say(page, text: str) -> dict:
    """Type ``text``, click Send, and wait for the reply."""
    page.type("#input", text)
    page.click("#send")
    return last_reply(page)


def api_reply(server, messages, max_tokens) -> str:
    status, body, _ = server.request("POST", "/v1/chat/completions", {"messages": messages, "temperature": 0,
                                                                     "top_p": 1, "max_tokens": max_tokens}, AUTH)
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


def test_the_page_is_one_file_that_fetches_nothing_from_elsewhere_under_a_strict_policy(chat_server):
    status, html, headers = chat_server.request("GET", "/")  # open without the key: it holds no data
    html = html.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "://" not in html and not re.search(r"\b(src|href)=\"(?!data:)", html)  # nothing from the internet
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert unsafe not in html, unsafe  # the page writes text only
    policy = headers["content-security-policy"]
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy  # only the page's own script runs
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


def test_a_typed_message_streams_the_reply_the_api_gives_with_the_key_typed_in(browser, chat_server, tmp_path):
    page = open_page(browser, chat_server, system="Answer in one word.", temperature=0, **{"max-tokens": 12})
    try:
        refused = say(page, "My colour is amber.")  # no key typed yet: the server's 401, shown
        assert refused["state"] == "error" and "API key" in refused["note"]
        page.type("#key", KEY)
        page.evaluate("document.getElementById('clear').click()")
        system = {"role": "system", "content": "Answer in one word."}
        first = say(page, "My colour is amber.")
        expected = api_reply(chat_server, [system, {"role": "user", "content": "My colour is amber."}], 12)
        assert first["state"] == "done" and first["body"] == expected and expected
        assert "first token" in first["meta"] and "total" in first["meta"]  # the answer's timings
        second = say(page, "Which colour?")  # the page sends the conversation so far
        expected = api_reply(chat_server, [system, {"role": "user", "content": "My colour is amber."},
                                           {"role": "assistant", "content": first["body"]},
                                           {"role": "user", "content": "Which colour?"}], 12)
        assert second["state"] == "done" and second["body"] == expected
        shot = Path(os.environ.get("LMKIT_PAGE_SHOT", tmp_path / "page.png"))  # set it to look at the page
        page.screenshot(shot)
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    finally:
        page.close()


def test_markup_in_a_users_input_and_in_a_models_reply_shows_as_text(browser, chat_server):
    page = open_page(browser, chat_server, key=KEY, temperature=0, **{"max-tokens": 4})
    try:
        assert say(page, MARKUP)["state"] == "done"
        assert page.evaluate("document.querySelector('.msg.user .body').textContent") == MARKUP
        # A reply with markup in it: the server's stream, answered by the test in the browser.
        page.send("Fetch.enable", patterns=[{"urlPattern": "*/v1/chat/completions"}])
        pieces = ['<img src=x onerror="window.pwned = 3">', " and ", "<script>window.pwned = 4</script>"]
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
                  *({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces),
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
        stream = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        page.type("#input", "Show me markup.")
        page.click("#send")
        paused = page.event("Fetch.requestPaused")
        sent = json.loads(paused["request"]["postData"])
        assert paused["request"]["headers"]["Authorization"] == f"Bearer {KEY}"
        assert sent["messages"][0] == {"role": "user", "content": MARKUP}  # the earlier turn, as text
        page.send("Fetch.fulfillRequest", requestId=paused["requestId"], responseCode=200,
                  responseHeaders=[{"name": "Content-Type", "value": "text/event-stream"}],
                  body=base64.b64encode(stream.encode()).decode())
        reply = last_reply(page)
        assert reply["state"] == "done" and reply["body"] == "".join(pieces)
        assert page.evaluate("document.querySelectorAll('#log img, #log script').length") == 0
        assert page.evaluate("typeof window.pwned") == "undefined"
    finally:
        page.close()


@pytest.mark.parametrize("kind", ["text", "fill-mask"])
def test_the_page_talks_with_text_and_fill_mask_models(browser, kind, gpt, bert):
    server = Server(gpt if kind == "text" else bert, "--max-tokens", "64", quiet=True)
    try:
        page = open_page(browser, server, temperature=0, **{"max-tokens": 10})
        assert page.evaluate("document.getElementById('kind').textContent") == kind
        if kind == "text":
            reply = say(page, "The for statement")
            _, body, _ = server.request("POST", "/v1/completions", {"prompt": "The for statement", "temperature": 0,
                                                                    "top_p": 1, "max_tokens": 10})
            assert reply["state"] == "done" and reply["body"] == body["choices"][0]["text"]
        else:
            reply = say(page, "The [MASK] returns a value.")
            _, body, _ = server.request("POST", "/v1/fill-mask", {"input": "The [MASK] returns a value.", "top_k": 5})
            assert reply["state"] == "done" and reply["body"] == body["data"][0]["masks"][0][0]["text"]
            assert page.evaluate("document.querySelectorAll('.msg.assistant .rows span').length") == 5 * 2
        page.close()
    finally:
        server.stop()
