"""Headless chromium driven over the Chrome DevTools Protocol, for the chat page's browser tests: Debian's chromium
has no chromedriver beside it here, so the tests speak the protocol themselves (websocket-client), as selenium's
driver would. https://chromedevtools.github.io/devtools-protocol/"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless=new", "--remote-debugging-port=0", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking", "--disable-sync",
         "--disable-component-update", "--disable-default-apps", "--mute-audio", "--hide-scrollbars")


def find_chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


class Browser:
    """One headless chromium with its own profile in ``profile``; :meth:`page` opens a tab."""

    def __init__(self, executable: str, profile: Path):
        self.profile = profile
        self.process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        active = profile / "DevToolsActivePort"  # chromium writes the port it chose, then the browser's path
        while not (active.exists() and len(active.read_text().splitlines()) == 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start (exit code {self.process.returncode})")
            time.sleep(0.05)
        self.port = int(active.read_text().splitlines()[0])
        self.browser = Session(f"ws://127.0.0.1:{self.port}{active.read_text().splitlines()[1]}")

    def page(self, width: int = 1200, height: int = 820) -> Page:
        target = self.browser.send("Target.createTarget", url="about:blank")["targetId"]
        page = Page(f"ws://127.0.0.1:{self.port}/devtools/page/{target}")
        page.closing = lambda: self.browser.send("Target.closeTarget", targetId=target)
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        return page

    def close(self) -> None:
        if getattr(self, "browser", None) is not None:
            self.browser.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Session:
    """A DevTools websocket: commands and their answers; events that come meanwhile are kept for :meth:`event`."""

    def __init__(self, url: str):
        import websocket

        # No Origin header: chromium refuses websocket clients from origins it was not told to allow.
        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params) -> dict[str, Any]:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        """The params of the first ``method`` event (waiting for it)."""
        import websocket

        deadline = time.monotonic() + timeout
        while True:
            for index, message in enumerate(self.events):
                if message["method"] == method:
                    return self.events.pop(index)["params"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} event in {timeout} s")
            self.socket.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                message = json.loads(self.socket.recv())
            except websocket.WebSocketTimeoutException:
                continue
            finally:
                self.socket.settimeout(30)
            if "method" in message:
                self.events.append(message)

    def close(self) -> None:
        self.socket.close()


class Page(Session):
    """A tab: navigate, evaluate JavaScript, type and click as a user does, take a screenshot."""

    closing = None  # closes the tab (the browser's command)

    def close(self) -> None:
        super().close()
        if self.closing is not None:
            self.closing()

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href.startsWith(%s)" % json.dumps(url))

    def evaluate(self, expression: str) -> Any:
        answer = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """The value of ``expression`` once it is truthy."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} still false after {timeout} s")
            time.sleep(0.05)
        return value

    def type(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` into it (as the keyboard's input method commits it)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """A left click at the middle of ``selector``, with the mouse."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
