"""An instruction-tuned (SFT) causal model: a text model whose prompts go into the checkpoint's template.
``evaluate`` scores its greedy answers against references by default; ``serve`` adds ``/v1/chat/completions``,
the conversation's system and user turns filling the template's one ``{prompt}``."""

from __future__ import annotations

import time
import uuid

from lmkit.checkpoint import Checkpoint
from lmkit.models import CAUSAL_ARCHS
from lmkit.tasks import text
from lmkit.tasks.base import Route, TaskSpec

CHAT_MAX_TOKENS = 256  # a chat answer's default length (capped by serve --max-tokens)


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
    default = min(CHAT_MAX_TOKENS, server.options.max_tokens)
    max_tokens = default if body.max_tokens is None else body.max_tokens
    settings = completions.sampling(server, body, default)
    name, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if body.stream:
        return completions.stream(call, prompts, body, settings, max_tokens, name, created, chat=True)
    rows = await completions.complete(server, prompts, body, settings, max_tokens)
    usage = completions.usage(server, prompts, rows)
    call.used(usage["total_tokens"])
    return {"id": name, "object": "chat.completion", "created": created, "model": server.options.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": row.text}, "finish_reason": row.finish}
                        for i, row in enumerate(rows)], "usage": usage}


def routes(server) -> list[Route]:
    from lmkit.serving.protocol import ChatRequest

    return [*text.routes(server), Route("/v1/chat/completions", ChatRequest, chat)]


def _is_sft_model(checkpoint: Checkpoint) -> bool:
    return checkpoint.task == "sft" and checkpoint.model_config.arch in CAUSAL_ARCHS


SPEC = TaskSpec("sft", "instruction-tuned (sft) language model", _is_sft_model,
               (text.GENERATE, text.PERPLEXITY, text.CHOICE), text.load, text.TEXT,
               endpoints=("/v1/completions", "/v1/chat/completions"), routes=routes, harness=True, decodes=True)
