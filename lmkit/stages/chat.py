"""``lmkit chat``: a chat model loaded for a conversation on the terminal (the loop is the command's, the
conversation lmkit.generation.chat's)."""

from __future__ import annotations

from lmkit import tasks
from lmkit.checkpoint import read_checkpoint
from lmkit.devices import set_threads
from lmkit.errors import UserError
from lmkit.generation.chat import ChatSession
from lmkit.stages.chat_config import ChatConfig
from lmkit.tasks.base import LoadOptions


def open_chat(config: ChatConfig) -> ChatSession:
    """The checkpoint's model behind a new conversation; a checkpoint that is not a chat model is refused."""
    set_threads(config.threads)
    checkpoint = read_checkpoint(config.checkpoint)
    spec = tasks.for_checkpoint(checkpoint)
    if checkpoint.chat is None:
        raise UserError(f"{config.checkpoint}: is a {spec.summary}, not a chat model (it has no chat template); "
                        "finetune one with --task chat, or use lmkit generate")
    quantize = None if config.quantize == "none" else config.quantize
    generator = spec.load(checkpoint, LoadOptions(config.device, config.precision, quantize, compile=False))
    return ChatSession(generator, config.sampling(), config.system)
