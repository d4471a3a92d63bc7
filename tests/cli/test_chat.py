"""``lmkit chat`` as a person uses it: the real command on a pseudo-terminal, lines typed one by one, each reply
read back from the screen (and equal to the reply of the conversation so far), the commands (/save, /reset,
/system, an unknown one) and Ctrl-D; refusals in-process."""

import importlib.util
import json
import os
import pty
import re
import select
import sys
import termios
import time

import pytest
from typer.testing import CliRunner

from lmkit.cli import app
from tests.serving.test_chat_server import session_reply

runner = CliRunner()
PROMPT = "> "


class Terminal:
    """A command on a pseudo-terminal: ``type`` a line as a person would, ``until`` the screen shows a pattern."""

    def __init__(self, *args: str):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command, its stdin, stdout and stderr on the terminal
            os.execvpe(sys.executable, [sys.executable, "-m", "lmkit", *args],
                       {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})
        self.screen = ""

    def until(self, pattern: str, timeout: float = 90) -> str:
        """Everything shown since the last call, up to and including the first match of ``pattern``."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.screen):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the terminal after {timeout} s:\n{self.screen}")
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    # (a terminal ends lines with CR LF, which may arrive in two reads)
                    self.screen = (self.screen + os.read(self.fd, 4096).decode("utf-8", "replace")).replace("\r\n",
                                                                                                        "\n")
                except OSError:  # the command has exited and closed the terminal
                    break
        match = re.search(pattern, self.screen)
        if match is None:
            raise AssertionError(f"no {pattern!r} before the command ended:\n{self.screen}")
        shown, self.screen = self.screen[:match.end()], self.screen[match.end():]
        return shown

    def reading(self, timeout: float = 60) -> None:
        """Wait until the command reads the terminal, as a person waits for the prompt: readline turns canonical
        mode off while it reads a line. Typed earlier, a Ctrl-D would reach the kernel's line discipline, which
        keeps it as a NUL character once readline takes over, and the command would not end."""
        if importlib.util.find_spec("readline") is None:
            return  # input() reads the terminal in canonical mode: what is typed early waits in its buffer
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(self.fd)[3] & termios.ICANON:
            if time.monotonic() > deadline:
                raise AssertionError(f"the command did not read the terminal after {timeout} s:\n{self.screen}")
            time.sleep(0.02)

    def type(self, line: str) -> None:
        self.reading()
        os.write(self.fd, line.encode("utf-8") + b"\n")

    def end_of_input(self) -> None:
        """Ctrl-D at the prompt."""
        self.reading()
        os.write(self.fd, b"\x04")

    def reply(self, line: str) -> str:
        """Type ``line`` and read what is shown before the next prompt, after the typed line's echo."""
        self.type(line)
        shown = self.until(r"\n> $|\n> ")
        lines = shown.split("\n")
        # The terminal echoes the line; readline may echo it again when it was typed before input() was called.
        start = len(lines) - lines[::-1].index(line) if line in lines else 0
        return "\n".join(lines[start:-1])

    def exit_code(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(self.pid, 9)
        raise AssertionError("the command did not exit")


def test_a_conversation_typed_on_a_terminal(chat_model, tmp_path):
    terminal = Terminal("chat", str(chat_model), "--temperature", "0", "--max-new-tokens", "12")
    opening = terminal.until(PROMPT)
    assert f"chatting with {chat_model} (system prompt: 'Be brief.')" in opening
    first = [{"role": "user", "content": "My colour is amber."}]
    assert terminal.reply("My colour is amber.") == session_reply(chat_model, first)
    shown = session_reply(chat_model, first)
    second = [*first, {"role": "assistant", "content": shown}, {"role": "user", "content": "Which colour?"}]
    answer = terminal.reply("Which colour?")
    assert answer == session_reply(chat_model, second)
    saved = tmp_path / "transcript.jsonl"
    assert f"(saved to {saved})" in terminal.reply(f"/save {saved}")
    transcript = json.loads(saved.read_text())
    assert transcript == {"messages": [{"role": "system", "content": "Be brief."}, *second[:2],
                                       second[2], {"role": "assistant", "content": answer}]}
    assert "(a new conversation)" in terminal.reply("/reset")
    assert terminal.reply("Which colour?") == session_reply(chat_model, [{"role": "user", "content": "Which colour?"}])
    assert "(system prompt: 'One word.')" in terminal.reply("/system One word.")
    assert "error: /colour: not a command (/help lists them)" in terminal.reply("/colour")
    assert "/save FILE: append the conversation" in terminal.reply("/help")
    terminal.end_of_input()  # Ctrl-D
    assert terminal.exit_code() == 0


def test_chat_refuses_a_model_without_a_chat_template_and_bad_settings(gpt):
    result = runner.invoke(app, ["chat", str(gpt)])
    assert result.exit_code == 1
    assert f"error: {gpt}: is a causal language model, not a chat model (it has no chat template)" in result.stderr
    result = runner.invoke(app, ["chat", str(gpt), "--temperature", "-1"])
    assert result.exit_code == 1 and "--temperature" in result.stderr


def test_a_save_it_cannot_do_is_refused_in_one_line_and_the_conversation_goes_on(chat_model, tmp_path):
    """In-process, lines piped in: each refusal is an `error: ` line naming the file, the session keeps going (exit
    0) and nothing is written."""
    missing = tmp_path / "missing" / "chat.jsonl"
    lines = ["/save", f"/save {tmp_path / 'early.jsonl'}", "My colour is red.", f"/save {tmp_path}", f"/save {missing}",
             "/exit"]
    result = runner.invoke(app, ["chat", str(chat_model), "--temperature", "0", "--max-new-tokens", "4"],
                           input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: /save: give the file to append the conversation to, e.g. /save chat.jsonl",
                      "error: /save: nothing to save yet",
                      f"error: {tmp_path}: is a directory; give a file name",
                      f"error: {missing}: the directory {missing.parent} does not exist"], result.stderr
    assert "Traceback" not in result.stderr and result.stdout.strip()  # the message between them was answered
    assert list(tmp_path.iterdir()) == []


def test_chat_help_names_every_command():
    result = runner.invoke(app, ["chat", "--help"])
    assert result.exit_code == 0
    for word in ("/reset", "/save FILE", "/system", "--system", "--max-new-tokens", "--temperature"):
        assert word in result.output


pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal is POSIX")
