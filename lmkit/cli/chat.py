"""``lmkit chat``: a conversation with a chat model on the terminal, each reply streamed as it is generated."""

from __future__ import annotations

import sys

from lmkit.cli._util import config_command, report_user_error
from lmkit.errors import UserError
from lmkit.progress import reporter
from lmkit.stages.chat_config import ChatConfig

COMMANDS = (("/reset", "start the conversation again"),
            ("/save FILE", "append the conversation to FILE as a JSONL record (the layout finetune --task chat reads)"),
            ("/system TEXT", "change the system prompt (/system alone shows it)"),
            ("/help", "list the commands"),
            ("/exit", "end (Ctrl-D too)"))


def _command(session, line: str) -> bool:
    """Do the command ``line``; False when it ends the conversation."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        reporter.info("(a new conversation)")
    elif name == "/save":
        if not argument:
            raise UserError("/save: give the file to append the conversation to, e.g. /save chat.jsonl")
        if not session.history:
            raise UserError("/save: nothing to save yet")
        reporter.info(f"(saved to {session.save(argument)})")
    elif name == "/system":
        if argument:
            session.system = argument
        reporter.info(f"(system prompt: {session.system_prompt!r})")
    elif name == "/help":
        for command, what in COMMANDS:
            reporter.info(f"{command}: {what}")
    else:
        raise UserError(f"{name}: not a command (/help lists them)")
    return True


def run(config: ChatConfig) -> None:
    from lmkit.generation.decode import STOP_EOS, STOP_LENGTH
    from lmkit.stages.chat import open_chat  # torch loads only when the command runs

    try:
        import readline  # noqa: F401 (line editing and history for input())
    except ImportError:
        pass
    session = open_chat(config)
    reporter.info(f"chatting with {config.checkpoint}" + (f" (system prompt: {session.system_prompt!r})"
                                                          if session.system_prompt else "")
                  + "; /help lists the commands, Ctrl-D or /exit ends")
    prompts = sys.stdin.isatty()  # lines piped in (a script, the demo) are answered without prompts
    while True:
        if prompts:
            reporter.err.print("> ", end="", markup=False)
        try:
            line = input()
            while line.endswith("\\"):  # a message of several lines: each but the last ends with a backslash
                if prompts:
                    reporter.err.print(". ", end="", markup=False)
                line = line[:-1] + "\n" + input()
        except EOFError:
            if prompts:
                reporter.err.print()
            return
        if not line.strip():
            continue
        try:
            if line.startswith("/"):
                if not _command(session, line.strip()):
                    return
                continue
            reply, dropped = session.reply(line, on_text=reporter.write)
            reporter.write("\n")
            if dropped:
                reporter.info(f"(the {dropped} oldest turns no longer fit the model's context and were left out)")
            if reply.reason != STOP_EOS:
                limit = "--max-new-tokens" if reply.reason == STOP_LENGTH else "the end of the context"
                reporter.info(f"(the reply stopped at {limit} before the end of its turn)")
        except UserError as exc:
            report_user_error(exc)
        except KeyboardInterrupt:  # Ctrl-C stops this reply (not kept); at the prompt it ends the session
            reporter.write("\n")
            reporter.info("(stopped; this exchange is not kept)")


config_command(
    "chat", ChatConfig,
    help="Talk to a chat model (finetuned with --task chat, or imported with its chat template): each line you type "
         "is the user's turn (a line ending with a backslash continues on the next), the reply streams as it is "
         "generated, and the history is kept (its oldest exchanges dropped when they no longer fit the context). "
         "Commands: /reset, /save FILE (append the conversation as JSONL), /system TEXT, /help, /exit. For "
         "conversations from a file: lmkit generate CKPT --messages FILE.\n\n"
         "Example: lmkit chat runs/chat/final --system \"Answer in one line.\" --temperature 0",
    render=lambda _result: None, run=run)
