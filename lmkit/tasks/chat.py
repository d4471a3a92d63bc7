"""A chat model: a causal model whose checkpoint carries a chat template (finetuned with ``--task chat``, or imported
with its own ``chat_template``). ``evaluate`` scores its greedy replies to held-out conversations' final assistant
turns (exact match, chrF, BLEU, ROUGE-L, and the share of replies that stop at the end of their turn), the echo of
the last user turn as the baseline, or its loss on the assistant's tokens; ``generate`` answers ``--messages``
conversations (a plain prompt is one user turn); ``serve`` renders ``/v1/chat/completions`` conversations with the
template and keeps ``/v1/completions`` for plain text; ``lmkit chat`` holds a conversation on the terminal."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from rich.rule import Rule

from lmkit.checkpoint import Checkpoint
from lmkit.data import conversations
from lmkit.errors import UserError
from lmkit.evaluation import generation_tasks
from lmkit.evaluation.scoring import Inference, Span, score_spans
from lmkit.evaluation.tasks import TaskOutcome
from lmkit.generation.decode import STOP_EOS
from lmkit.generation.generator import Generator, Reply
from lmkit.generation.settings import SamplingSettings
from lmkit.models import CAUSAL_ARCHS
from lmkit.progress import reporter
from lmkit.tasks import text
from lmkit.tasks.base import JSONL, Baseline, EvalPlan, Evaluation, Generation, Inputs, Route, TaskSpec, read_examples
from lmkit.tasks.inputs import read_inputs, text_of

REPLY_METRICS = (*generation_tasks.GENERATION_METRICS, "stop_rate")
CHAT_MODEL = "a chat model"
MAKE = "`lmkit finetune BASE conversations.jsonl --task chat`"


# -- evaluate ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatItem:
    """A held-out conversation up to its final assistant turn, and that turn (the reference)."""

    id: str
    messages: list[dict[str, str]]
    reference: str


def _items(plan: EvalPlan, tokenizer) -> list[ChatItem]:
    def read(path: str, left: int) -> list[ChatItem]:
        items = []
        for conversation in conversations.read(path)[:left or None]:
            messages = conversation.as_list()
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            if not any(m["role"] == "user" for m in messages[:last]):
                raise UserError(f"{conversation.where}: no user turn before the final assistant turn to answer")
            items.append(ChatItem(conversation.where, messages[:last], messages[last]["content"]))
        return items

    return read_examples(plan, read)


def replies(generator: Generator, items: list[list[dict[str, str]]], names: list[str], settings: SamplingSettings,
            system: str | None = None, on_token: Callable[[int, str], None] | None = None) -> list[Reply]:
    """The model's reply to each conversation (its oldest turns dropped when it is longer than the context)."""
    encoded = [generator.encode_messages(messages, name, system) for messages, name in zip(items, names, strict=True)]
    return generator.generate_ids([ids for ids, _, _ in encoded], [rendered for _, _, rendered in encoded], settings,
                                  on_token, names=names)


def _answer(plan: EvalPlan, inference: Inference, tokenizer, items: list[ChatItem]) -> TaskOutcome:
    config = plan.config
    generator = Generator(plan.checkpoint, inference.device, inference.precision, batch_size=inference.batch_size)
    settings = SamplingSettings(temperature=0.0, max_new_tokens=config.max_new_tokens, stop=config.stop_strings())
    started = time.perf_counter()
    with reporter.task("generating", total=len(items), unit="replies") as task:
        answered: list[Reply] = []
        for start in range(0, len(items), config.batch_size):
            batch = items[start:start + config.batch_size]
            answered += replies(generator, [item.messages for item in batch], [item.id for item in batch], settings)
            task.advance(len(batch))
    seconds = time.perf_counter() - started
    outputs = [reply.text for reply in answered]
    names = [name for name in plan.metrics if name != "stop_rate"]
    metrics = generation_tasks.text_metrics(outputs, [item.reference for item in items], names)
    # A reply that ended at a stop id (the end-of-turn token, eos) rather than at --max-new-tokens or the context.
    metrics["stop_rate"] = sum(reply.reason == STOP_EOS for reply in answered) / len(answered)
    predictions = [{"id": item.id, "messages": item.messages, "gold": item.reference, "predicted": reply.text,
                    "stopped": reply.reason} for item, reply in zip(items, answered, strict=True)]
    generated = sum(len(reply.ids) for reply in answered)
    method = {"method": "greedy decoding of the final assistant turn", "temperature": 0.0,
              "max_new_tokens": config.max_new_tokens, "stop": list(config.stop_strings()),
              "prompt": "the conversation before it, rendered with the checkpoint's chat template",
              "stop_rate": "share of replies ending at a stop id (end of turn, eos) before --max-new-tokens"}
    return TaskOutcome(len(items), metrics, method, {"items": len(items), "generated_tokens": generated}, predictions,
                       generated_tokens=generated, generation_seconds=seconds)


def _echo(plan: EvalPlan, tokenizer, items: list[ChatItem], predictions: list[dict[str, Any]]):
    """The baseline: the last user turn repeated as the reply."""
    echoed = [next(m["content"] for m in reversed(item.messages) if m["role"] == "user") for item in items]
    names = [name for name in plan.metrics if name != "stop_rate"]
    metrics = generation_tasks.text_metrics(echoed, [item.reference for item in items], names)
    return metrics, {"method": "echo: the last user turn as the reply"}


def _examples(plan: EvalPlan, tokenizer) -> list[conversations.ChatExample]:
    chat, block = plan.checkpoint.chat, plan.checkpoint.model_config.block_size

    def read(path: str, left: int) -> list[conversations.ChatExample]:
        found = []
        for conversation in conversations.read(path)[:left or None]:
            example = conversations.tokenize(conversation, chat, tokenizer)
            if len(example.tokens) > block:
                raise UserError(f"{conversation.where}: {len(example.tokens)} tokens, more than the model's context "
                                f"({block}); shorten the conversation")
            found.append(example)
        return found

    return read_examples(plan, read)


def spans_of(example: conversations.ChatExample) -> list[Span]:
    """One span per run of assistant tokens: the conversation up to the run's end, its tokens scored."""
    spans, at = [], 1  # the first token is never predicted
    while at < len(example.tokens):
        if not example.trained[at]:
            at += 1
            continue
        end = at
        while end < len(example.tokens) and example.trained[end]:
            end += 1
        spans.append(Span(np.array(example.tokens[:end]), end - at))
        at = end
    return spans


def _loss(plan: EvalPlan, inference: Inference, tokenizer, examples: list[conversations.ChatExample]) -> TaskOutcome:
    spans = [span for example in examples for span in spans_of(example)]
    with reporter.task("scoring", total=len(spans), unit="turns") as task:
        scores = score_spans(inference, spans, task.advance)
    tokens = sum(len(score.values) for score in scores)
    loss = -math.fsum(float(v) for score in scores for v in score.values) / tokens
    metrics = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
    method = {"method": "mean negative log-likelihood of the assistant's tokens (each turn's text and end of turn), "
                        "each given the conversation before it, rendered with the checkpoint's chat template"}
    return TaskOutcome(len(examples), metrics, method, {"conversations": len(examples), "assistant_turns": len(spans),
                                                        "scored_tokens": tokens})


REPLIES = Evaluation("chat", REPLY_METRICS, JSONL, _answer, needs=CHAT_MODEL, make=MAKE, load=_items, own_model=True,
                     baseline=Baseline(_echo, trains=False), flags=("max_new_tokens", "stop"))
LOSS = Evaluation("chat-lm", ("loss", "ppl"), JSONL, _loss, needs=CHAT_MODEL, make=MAKE, load=_examples)


# -- generate ------------------------------------------------------------------------------------------------

def _read(config, checkpoint: Checkpoint) -> Inputs:
    """--messages conversations; else the plain prompts, each a one-turn conversation."""
    if config.messages is None:
        given = read_inputs(config, REPLY, "chat")
        given.conversations = [[{"role": "user", "content": prompt}] for prompt in given.texts]
        return given
    where = "stdin" if config.messages == "-" else config.messages
    found = conversations.read(where, needs_reply=False, text=text_of(config.messages))
    return Inputs([c.messages[-1]["content"] for c in found], [{"messages": c.as_list()} for c in found],
                  [c.where for c in found], jsonl=True, conversations=[c.as_list() for c in found])


def answer(generator: Generator, given: Inputs, config, stream: Callable[[str], None] | None) -> list[dict[str, Any]]:
    """The assistant's reply to each conversation (``--num-samples`` of each); ``stream`` receives a lone reply."""
    n = config.num_samples
    items = [messages for messages in given.conversations for _ in range(n)]
    names = [name for name in given.names for _ in range(n)]
    on_token = None if stream is None else (lambda _index, piece: stream(piece))
    texts = [reply.text for reply in replies(generator, items, names, config.sampling(), config.system, on_token)]
    records = []
    for i, record in enumerate(given.records):
        record = dict(record)
        if n == 1:
            record["reply"] = texts[i]
        else:
            record["replies"] = texts[i * n:(i + 1) * n]
        records.append(record)
    return records


def show(records: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """Replies as plain text, a rule naming the conversation and sample between several."""
    for number, record in enumerate(records, 1):
        texts = record["replies"] if "replies" in record else [record["reply"]]
        for sample, reply in enumerate(texts, 1):
            if len(texts) > 1 or len(records) > 1:
                label = f"conversation {number}" + (f", sample {sample}" if len(texts) > 1 else "")
                reporter.out.print(Rule(label, align="left"))
            reporter.write(reply + "\n")


def _interactive(checkpoint: Checkpoint) -> str | None:
    return f"is a chat model: `lmkit chat {checkpoint.path}` holds a conversation, with its history"


REPLY = Generation("prompt", answer, show, flags=(*text.SAMPLING_FLAGS, "messages", "system"), other_field="text",
                   whole_file=True, streams=True, read=_read, interactive=_interactive)


# -- serve ---------------------------------------------------------------------------------------------------

async def chat_completions(body, call):
    """``POST /v1/chat/completions``: the conversation rendered with the checkpoint's chat template."""
    from lmkit.serving import completions
    from lmkit.serving.errors import ApiError

    server = call.server
    generator: Generator = server.model
    try:
        conversation = conversations.parse({"messages": [m.model_dump() for m in body.messages]}, "messages",
                                           needs_reply=False)
    except conversations.BadConversation as exc:
        raise ApiError(400, str(exc), "messages") from None
    messages = conversation.as_list()
    ids, _dropped, rendered = generator.encode_messages(messages, "messages")  # the server refuses what does not fit
    return await completions.chat_reply(call, [(rendered, ids)], body)


def routes(server) -> list[Route]:
    from lmkit.serving.protocol import ChatRequest

    return [*text.routes(server), Route("/v1/chat/completions", ChatRequest, chat_completions)]


def _is_chat_model(checkpoint: Checkpoint) -> bool:
    return checkpoint.task == "chat" and checkpoint.model_config.arch in CAUSAL_ARCHS


SPEC = TaskSpec("chat", "chat model", _is_chat_model,
                (REPLIES, LOSS, text.PERPLEXITY, text.CHOICE, text.PREFERENCE, text.PASS_AT_K), text.load, REPLY,
                endpoints=("/v1/completions", "/v1/chat/completions"), routes=routes, harness=True, decodes=True)
