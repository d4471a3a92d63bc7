"""``GET /`` of ``lmkit serve``: one self-contained HTML page (page.html beside this module: inline script and style,
nothing fetched from elsewhere) to talk with the loaded model through the server's own API.

The page shows model output and user input as text only (``textContent``); the Content-Security-Policy sent with
it is the second wall: only the page's own script and style run (pinned by their hashes), it connects to this
server alone, and an injected ``<script>`` or ``onerror=`` would not run.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

from starlette.responses import HTMLResponse


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def _page() -> tuple[str, dict[str, str]]:
    html = resources.files("lmkit.serving").joinpath("page.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    policy = ("default-src 'none'; script-src " + " ".join(map(_digest, scripts)) + "; style-src "
              + " ".join(map(_digest, styles)) + "; connect-src 'self'; img-src data:; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'none'")
    return html, {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                  "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def response() -> HTMLResponse:
    html, headers = _page()
    return HTMLResponse(html, headers=headers)
