"""OpenAI's completions protocol over a text model (lmkit.generation's Generator behind the engine): prompts as
text or token ids, sampling settings, ``n`` samples, echo and log-probabilities, usage, and streaming as
server-sent events. The text tasks' routes (``/v1/completions``, ``/v1/chat/completions``) are built on it."""

from __future__ import annotations

import time
import traceback
import uuid
from typing import Any, Callable

from fastapi.responses import StreamingResponse

from lmkit.errors import UserError
from lmkit.evaluation.scoring import sequences_logprobs
from lmkit.generation.settings import SamplingSettings
from lmkit.progress import reporter
from lmkit.serving.app import Call, Server, busy
from lmkit.serving.engine import BATCH, COMPLETE, Batched, Row
from lmkit.serving.errors import ApiError
from lmkit.serving.protocol import CompletionRequest, Sampling
from lmkit.serving.streaming import DONE, Finished, event, relay
from lmkit.serving.timing import Timing
from lmkit.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
Prompt = tuple[str, list[int]]  # a prompt's text and the model's input ids


def sampling(server: Server, body: Sampling, default_tokens: int) -> SamplingSettings:
    max_tokens = default_tokens if body.max_tokens is None else body.max_tokens
    if max_tokens > server.options.max_tokens:
        raise ApiError(400, f"max_tokens: {max_tokens} is more than this server allows ({server.options.max_tokens})",
                       "max_tokens")
    if any(not stop for stop in body.stops()):
        raise ApiError(400, "stop: a stop string must not be empty", "stop")
    return SamplingSettings(max_new_tokens=max(max_tokens, 1), temperature=body.temperature, top_k=body.top_k,
                            top_p=body.top_p, min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                            stop=body.stops(), seed=body.seed or 0)


def encode(server: Server, text: str, name: str) -> Prompt:
    """A text prompt and its model input (an SFT model's template applied); refused when longer than the context."""
    return text, server.model.encode_prompt(text, name)


def prompts_of(server: Server, body: CompletionRequest) -> list[Prompt]:
    """Each prompt of a request: text, or token ids (after what generate puts before a prompt: an lmkit causal
    model's ``</s>``, as training does; an imported tokenizer's own start)."""
    prompt, generator = body.prompt, server.model
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt: must not be empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    found, vocab_size = [], server.tokenizer.vocab_size
    for index, item in enumerate(prompt):
        name = f"prompt[{index}]" if len(prompt) > 1 else "prompt"
        if isinstance(item, str):
            found.append(encode(server, item, name))
            continue
        if not item or any(not 0 <= t < vocab_size for t in item):
            raise ApiError(400, f"{name}: token ids must be in [0, {vocab_size})", "prompt")
        ids = list(item) if generator.template is not None else [*generator.prefix, *item]
        if len(ids) >= server.block_size:
            raise ApiError(400, f"{name}: {len(item)} tokens, more than the model's context allows "
                           f"({server.block_size - 1})", "prompt")
        found.append((server.tokenizer.decode(item), ids))
    return found


def skip(server: Server, ids: list[int]) -> int:
    """How many leading ids are the framing's (the ``</s>`` before an lmkit causal prompt, an imported tokenizer's
    ``<s>``), not the prompt's."""
    generator = server.model
    prefix = generator.prefix
    return len(prefix) if prefix and ids[:len(prefix)] == prefix and generator.template is None else 0


async def complete(server: Server, prompts: list[Prompt], body: Sampling, settings: SamplingSettings,
                   max_tokens: int, timing: Timing, on_text: Callable[[int, str], None] | None = None,
                   admitted: bool = False) -> list[Row]:
    """``body.n`` completions of each prompt, decoded by the engine with other requests' rows; ``timing`` notes
    when the first text and the end came. ``admitted``: a stream's, past the queue check (see stream)."""
    engine = server.engine
    if len(prompts) * body.n > engine.max_batch:
        raise ApiError(400, f"prompt: {len(prompts)} prompt(s) x n {body.n} = {len(prompts) * body.n} completions, "
                       f"more than this server decodes at once ({engine.max_batch}); send fewer per request", "prompt")

    def noted(index: int, text: str) -> None:  # on the engine's worker thread
        timing.token()
        if on_text is not None:
            on_text(index, text)

    # Without a stream too: the first piece of text is the time to first token (the engine reports no other).
    rows = engine.rows([ids for _, ids in prompts], [text for text, _ in prompts], body.n, settings.seed, noted)
    if max_tokens == 0:
        for row in rows:
            row.finish = "length"
        return rows
    rows = await server.submit(COMPLETE, rows, settings, admitted=admitted)
    timing.decoded(max(len(row.new_ids) for row in rows))
    return rows


def token_text(tokenizer, token: int) -> str:
    """A token as logprobs name it: lmkit's SentencePiece piece ("\u2581the"), an imported tokenizer's decoded
    text (not byte-level BPE's "\u0120the" or WordPiece's "##s")."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.id_to_piece(token)
    return tokenizer.decode([token])


async def logprobs_of(server: Server, prompts: list[Prompt], rows: list[Row], n: int, top: int,
                      echo: bool) -> list[dict[str, Any]]:
    """OpenAI's logprobs of each completion (and of its prompt with ``echo``)."""
    generator, tokenizer, block_size = server.model, server.tokenizer, server.block_size
    wanted = [(prompts[i // n][1] + row.new_ids)[skip(server, prompts[i // n][1]):] for i, row in enumerate(rows)]

    def score(wanted: list[list[int]]) -> list[tuple[list[float], list[dict[int, float]]]]:
        if any(len(ids) > block_size for ids in wanted):
            longest = max(len(ids) for ids in wanted)
            raise UserError(f"prompt: {longest} tokens with the completion, more than the model's context "
                            f"({block_size - 1} tokens)")
        return sequences_logprobs(generator.model, generator.start, wanted, top)

    scores = await server.submit(BATCH, Batched(("logprobs", top), wanted, score))  # with other requests' rows
    results = []
    for index, (row, (logprobs, tops)) in enumerate(zip(rows, scores, strict=True)):
        ids = prompts[index // n][1]
        offset = skip(server, ids)  # the scores are of full[offset:], each given </s> and the ids before it
        start = offset if echo else len(ids)
        pieces = [token_text(tokenizer, t) for t in (ids + row.new_ids)[start:]]
        offsets, position = [], 0
        for piece in pieces:
            offsets.append(position)
            position += len(piece.replace("\u2581", " "))
        top_rows = [{token_text(tokenizer, t): v for t, v in row_top.items()} for row_top in tops]
        results.append({"tokens": pieces, "token_logprobs": logprobs[start - offset:],
                        "top_logprobs": top_rows[start - offset:] if top else None, "text_offset": offsets})
    return results


def usage(server: Server, prompts: list[Prompt], rows: list[Row]) -> dict[str, int]:
    prompt_tokens = sum(len(ids) - skip(server, ids) for _, ids in prompts)
    completion_tokens = sum(len(row.new_ids) for row in rows)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def completions(body: CompletionRequest, call: Call):
    """``POST /v1/completions``."""
    server = call.server
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    settings = sampling(server, body, DEFAULT_MAX_TOKENS)
    prompts = prompts_of(server, body)
    name, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if body.stream:
        if body.echo or body.logprobs is not None:
            raise ApiError(400, "stream: cannot be combined with echo or logprobs on this server", "stream")
        return stream(call, prompts, body, settings, max_tokens, name, created, chat=False)
    rows = await complete(server, prompts, body, settings, max_tokens, call.timing)
    scored = body.logprobs is not None or body.echo
    logprobs = await logprobs_of(server, prompts, rows, body.n, body.logprobs or 0, body.echo) if scored else None
    choices = [{"index": index, "text": (prompts[index // body.n][0] if body.echo else "") + row.text,
                "logprobs": logprobs[index] if logprobs is not None else None, "finish_reason": row.finish}
               for index, row in enumerate(rows)]
    counts = usage(server, prompts, rows)
    call.used(counts["total_tokens"], counts["completion_tokens"])
    return {"id": name, "object": "text_completion", "created": created, "model": server.options.model_name,
            "choices": choices, "usage": counts}


CHAT_MAX_TOKENS = 256  # a chat reply's default length (capped by serve --max-tokens)


async def chat_reply(call: Call, prompts: list[Prompt], body: Sampling):
    """OpenAI's chat completion (or its stream) of ``prompts``, already rendered from a request's messages by
    the kind of model serving them."""
    server = call.server
    default = min(CHAT_MAX_TOKENS, server.options.max_tokens)
    max_tokens = default if body.max_tokens is None else body.max_tokens
    settings = sampling(server, body, default)
    name, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if body.stream:
        return stream(call, prompts, body, settings, max_tokens, name, created, chat=True)
    rows = await complete(server, prompts, body, settings, max_tokens, call.timing)
    used = usage(server, prompts, rows)
    call.used(used["total_tokens"], used["completion_tokens"])
    return {"id": name, "object": "chat.completion", "created": created, "model": server.options.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": row.text}, "finish_reason": row.finish}
                        for i, row in enumerate(rows)], "usage": used}


def stream(call: Call, prompts: list[Prompt], body: Sampling, settings: SamplingSettings, max_tokens: int, name: str,
           created: int, chat: bool) -> StreamingResponse:
    """The completions as server-sent events: each piece of text as it is decoded, then each row's finish
    reason (the last one with the request's ``timings``) and ``[DONE]``; chat chunks open with the assistant's
    role."""
    server = call.server
    # The queue is checked here, while a 503 can still be answered: once the stream has begun (its 200 sent) its job
    # is queued whatever the queue holds by then, rather than ending the stream with a "busy" error event.
    if server.engine.pending >= server.engine.max_queue:
        raise busy()
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, text: str | None, finish: str | None, first: bool = False, timings=None) -> str:
        if chat:
            delta = {"role": "assistant"} if first else ({"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish}
        return event({"id": name, "object": kind, "created": created, "model": server.options.model_name,
                      "choices": [choice], **({"timings": timings} if timings is not None else {})})

    async def events():
        if chat:
            for index in range(len(prompts) * body.n):
                yield chunk(index, None, None, first=True)
        async for item in relay(lambda emit: complete(server, prompts, body, settings, max_tokens, call.timing,
                                                      on_text=lambda at, text: emit((at, text)), admitted=True)):
            if not isinstance(item, Finished):
                yield chunk(item[0], item[1], None)
            elif isinstance(item.error, ApiError):
                yield event({"error": {"message": item.error.message, "type": item.error.kind}})
            elif item.error is not None:  # the stream has started: the error goes in it, logged here
                reporter.warn("".join(traceback.format_exception(item.error)).rstrip())
                yield event({"error": {"message": "internal server error", "type": "server_error"}})
            else:
                counts = usage(server, prompts, item.result)
                call.used(counts["total_tokens"], counts["completion_tokens"])
                last = len(item.result) - 1
                for index, row in enumerate(item.result):
                    yield chunk(index, None if chat else "", row.finish,
                                timings=call.timing.report() if index == last else None)
                yield DONE

    return StreamingResponse(events(), media_type="text/event-stream")
