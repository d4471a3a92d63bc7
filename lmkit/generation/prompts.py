"""``PromptFormat``: how a checkpoint reads a prompt and writes a reply, as token ids, without its weights.

A prompt becomes model input as training saw text: an lmkit causal LM's prompt follows ``</s>`` (packing puts it
before every document, so the model reads the prompt as a document's beginning); an imported model's prompt is
framed as its own tokenizer frames it (transformers' ``tokenizer(prompt)``: Llama's ``<s>`` first, nothing for
GPT-2; ``start_token`` True or False overrides either rule); an SFT model's prompt is wrapped in the checkpoint's
template and encoded as is (lmkit.data.instructions); a chat model's conversation is rendered with its chat
template (lmkit.data.conversations), its oldest turns dropped when it is longer than the context. A reply ends
with the token that ends it: a chat model's end of turn, else ``</s>``.

The Generator (generator.py) decodes with it; preference tuning, RL and their evaluations frame their prompts,
replies and samples with it, so that a pair is scored exactly as ``generate`` would have written it.
"""

from __future__ import annotations

from lmkit.checkpoint import Checkpoint
from lmkit.data.chat_template import render
from lmkit.data.conversations import Conversation, tokenize
from lmkit.data.instructions import render_prompt
from lmkit.errors import UserError
from lmkit.models import CAUSAL_ARCHS
from lmkit.progress import reporter
from lmkit.tokenizer import HFTokenizer, Tokenizer

TRUNCATIONS = ("left", "error")

Prompt = str | list[dict[str, str]]  # a text, or a conversation ({"role", "content"} messages) to reply to


class PromptFormat:
    def __init__(self, checkpoint: Checkpoint, *, truncate: str = "left", start_token: bool | None = None):
        """``truncate``: "left" keeps the end of a prompt longer than the context (with a warning), "error"
        refuses it. ``start_token``: put the tokenizer's start token before a plain prompt (True), or nothing
        (False); None: the model's own rule (lmkit's models: ``</s>``; an imported one: its tokenizer's framing)."""
        if checkpoint.task not in ("lm", "sft", "chat") or checkpoint.model_config.arch not in CAUSAL_ARCHS:
            raise UserError(f"{checkpoint.path}: a {checkpoint.model_config.arch} {checkpoint.task} checkpoint does "
                            "not generate text (fill-mask and classifiers: see `lmkit generate --help`)")
        if truncate not in TRUNCATIONS:
            raise UserError(f"--truncate: {truncate!r} is not one of {', '.join(TRUNCATIONS)}")
        self.checkpoint, self.truncate = checkpoint, truncate
        self.template = checkpoint.template if checkpoint.task == "sft" else None
        self.chat = checkpoint.chat
        self.block_size = checkpoint.model_config.block_size
        self.tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
        specials = self.tokenizer.specials
        self.start = specials.eos if specials.start is None else specials.start  # what a causal prompt follows
        # A plain prompt framed as the imported model's tokenizer frames it (transformers' default), else after start.
        self.own_framing = start_token is None and isinstance(self.tokenizer, HFTokenizer)
        self.prefix = (self.tokenizer.frame("") if self.own_framing
                       else [self.start] if start_token is not False else [])  # what token-id prompts follow
        self.stop_ids = checkpoint.stop_ids
        # Special tokens are never sampled, but those that end a reply (a chat model's end of turn) are.
        self.banned = tuple(sorted(set(specials.never_generated) - set(self.stop_ids)))
        self.end_of_reply = self.chat.end_of_turn if self.chat is not None and self.chat.end_of_turn is not None \
            else specials.eos

    def encode_prompt(self, prompt: str, name: str = "prompt") -> list[int]:
        """The model input of ``prompt`` (called ``name`` in messages), cut to fit the context."""
        if not prompt.strip():
            raise UserError(f"{name}: is empty (give text for the model to continue)")
        ids = self._framed(prompt)
        limit = self.block_size - 1  # at least one position left for the completion
        if len(ids) > limit:
            if self.truncate == "error":
                raise UserError(f"{name}: {len(ids)} tokens, more than the model's context allows "
                                f"({limit} + 1 new token; block size {self.block_size}); shorten it or use "
                                "--truncate left")
            reporter.warn(f"{name}: {len(ids)} tokens, longer than the model's context allows; kept "
                          f"its last {limit} tokens (block size {self.block_size})")
            ids = ids[-limit:]
        return ids

    def _framed(self, prompt: str) -> list[int]:
        """A text prompt's ids, whole: in the SFT template, in an imported tokenizer's framing, or after the prefix."""
        if self.template is not None:
            return self.tokenizer.encode(render_prompt(self.template, prompt))
        if self.own_framing:
            return self.tokenizer.frame(prompt)
        return [*self.prefix, *self.tokenizer.encode(prompt)]

    def encode_messages(self, messages: list[dict[str, str]], name: str = "conversation", system: str | None = None,
                        room: int = 1) -> tuple[list[int], int, str]:
        """A chat model's input for the reply to ``messages`` (its template's rendering, opened by ``system`` or the
        default system prompt), how many of its oldest turns were dropped to leave ``room`` new tokens in the
        context (whole turns, the system turn kept; ``truncate="error"`` refuses instead), and the rendering (what
        seeds the reply's sampling, as a prompt's text does)."""
        if self.chat is None:
            raise UserError(f"{self.checkpoint.path}: not a chat model (it has no chat template); give it a prompt "
                            "instead of messages, or finetune it with --task chat")
        limit = max(self.block_size - max(room, 1), 1)
        dropped = 0
        while True:
            rendered = render(self.chat, self.chat.with_system(messages, system), True, name)
            ids = self.tokenizer.encode_chat(rendered)
            if len(ids) <= limit:
                return ids, dropped, rendered
            first = 1 if messages[0]["role"] == "system" else 0
            rest = messages[first:]
            # The oldest exchange goes: turns up to the next user turn after the first.
            cut = next((i for i in range(1, len(rest)) if rest[i]["role"] == "user"), None)
            if self.truncate == "error" or cut is None:
                raise UserError(f"{name}: {len(ids)} tokens, more than the model's context allows ({limit}, leaving "
                                f"{room} for the reply; block size {self.block_size})"
                                + ("; shorten it or use --truncate left" if self.truncate == "error" and cut
                                   else "; shorten the last message"))
            messages = [*messages[:first], *rest[cut:]]
            dropped += cut

    def messages_of(self, prompt: Prompt) -> list[dict[str, str]]:
        """A chat model's conversation for ``prompt``: a text becomes the user's turn."""
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)

    def encode_input(self, prompt: Prompt, name: str = "prompt", room: int = 1) -> list[int]:
        """The model's input for a reply to ``prompt``: a text for any model (a chat model reads it as the user's
        turn), or a conversation for a chat model."""
        if self.chat is not None:
            return self.encode_messages(self.messages_of(prompt), name, room=room)[0]
        if not isinstance(prompt, str):
            raise UserError(f"{name}: a conversation, but {self.checkpoint.path} is not a chat model (it has no chat "
                            "template); give the prompt as a text")
        return self.encode_prompt(prompt, name)

    def encode_exchange(self, prompt: Prompt, reply: str, name: str = "record") -> tuple[list[int], list[int]]:
        """(prompt ids, reply ids) of ``reply`` to ``prompt`` as the model reads and writes them: the reply's
        tokens and the token that ends it (a chat model's end of turn, else ``</s>``); a chat exchange is rendered
        and tokenized whole, as chat finetuning trains on it. Nothing is cut: the caller checks the length."""
        if not reply.strip():
            raise UserError(f"{name}: the reply is empty")
        if self.chat is None:
            if not isinstance(prompt, str):
                raise UserError(f"{name}: a conversation, but {self.checkpoint.path} is not a chat model (it has no "
                                "chat template); give the prompt as a text")
            return self._framed(prompt), [*self.tokenizer.encode(reply), self.end_of_reply]
        messages = [*self.messages_of(prompt), {"role": "assistant", "content": reply}]
        example = tokenize(Conversation(tuple(self.chat.with_system(messages)), name), self.chat, self.tokenizer,
                           last_turn_only=True)
        marked = [t for t, keep in enumerate(example.trained) if keep]
        first, last = marked[0], marked[-1]
        return example.tokens[:first], example.tokens[first:last + 1]
