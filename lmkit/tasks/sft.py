"""An instruction-tuned (SFT) causal model: a text model whose prompts go into the checkpoint's template.
``evaluate`` scores its greedy answers against references by default; ``serve`` adds ``/v1/chat/completions``,
the conversation's system and user turns filling the template's one ``{prompt}``."""

from __future__ import annotations

from lmkit.checkpoint import Checkpoint
from lmkit.models import CAUSAL_ARCHS
from lmkit.tasks import text
from lmkit.tasks.base import Route, TaskSpec


async def chat(body, call):
    """``POST /v1/chat/completions``."""
    from lmkit.serving import completions
    from lmkit.serving.errors import ApiError

    server = call.server
    if body.messages[-1].role != "user":
        raise ApiError(400, "messages: the last message must be the user's", "messages")
    # The SFT template has one {prompt}: the system and user turns, in order, fill it.
    prompts = [completions.encode(server, "\n\n".join(m.content for m in body.messages
                                                      if m.role in ("system", "user")), "messages")]
    return await completions.chat_reply(call, prompts, body)


def routes(server) -> list[Route]:
    from lmkit.serving.protocol import ChatRequest

    return [*text.routes(server), Route("/v1/chat/completions", ChatRequest, chat)]


def _is_sft_model(checkpoint: Checkpoint) -> bool:
    return checkpoint.task == "sft" and checkpoint.model_config.arch in CAUSAL_ARCHS


SPEC = TaskSpec("sft", "instruction-tuned (sft) language model", _is_sft_model,
               (text.GENERATE, text.PERPLEXITY, text.CHOICE, text.PREFERENCE, text.PASS_AT_K), text.load, text.TEXT,
               endpoints=("/v1/completions", "/v1/chat/completions"), routes=routes, harness=True, decodes=True)
