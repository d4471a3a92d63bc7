"""``Generator``: text completions of prompts from a causal, SFT or chat checkpoint, batched, with a KV cache.

A prompt becomes model input as training saw text (prompts.PromptFormat, which the Generator is, with the
model's weights: an imported model's prompt framed as its tokenizer frames it, so that greedy decoding continues
as transformers does; an SFT model's in its template; a chat model's conversation rendered with its chat
template, its oldest turns dropped when it is longer than the context). A prompt longer than the context keeps its last
block_size - 1 tokens, with a warning (``truncate="error"`` refuses it instead); a completion ends at a stop id
(</s>, a chat model's end of turn, an imported model's generation_config eos ids), a stop string,
max_new_tokens, or the context's end. A chat model's end-of-turn token is generated (and ends the reply) though
it is a special token; every other special token is never sampled.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from lmkit.checkpoint import Checkpoint
from lmkit.errors import UserError
from lmkit.generation.decode import STOP_CONTEXT, decode
from lmkit.generation.model import load_model
from lmkit.generation.prompts import TRUNCATIONS, PromptFormat
from lmkit.generation.sampling import prompt_key, row_generators
from lmkit.generation.settings import SamplingSettings
from lmkit.generation.text import CompletionText
from lmkit.progress import reporter

__all__ = ["TRUNCATIONS", "Generator", "Reply"]


@dataclass
class Reply:
    """One completion: its text, why it stopped (decode's STOP_EOS at a stop id, STOP_LENGTH ...) and its ids."""

    text: str
    reason: str
    ids: list[int]


class Generator(PromptFormat):
    def __init__(self, checkpoint: Checkpoint, device: torch.device | str = "cpu", precision: str = "fp32",
                 quantize: str | None = None, *, batch_size: int = 8, truncate: str = "left", compile: bool = False,
                 start_token: bool | None = None):
        """``batch_size``: prompts decoded together; ``truncate`` and ``start_token``: how prompts are framed
        (lmkit.generation.prompts.PromptFormat).

        ``compile``: the decoding step (the model's ``encode`` of one new column) runs compiled by
        torch.compile; prompts are read eagerly, once per batch. The first steps compile; a recompile then
        makes the cache length (and the batch) symbolic, so a run settles on a graph or two. Measured on 2
        CPU cores (gpt-small, fp32, 512 new tokens): 538 tokens/s at batch 1 against 360 eager, 1,550 against
        1,144 at batch 8."""
        super().__init__(checkpoint, truncate=truncate, start_token=start_token)
        if batch_size < 1:
            raise UserError(f"--batch-size: must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.model = load_model(checkpoint, device, precision, quantize)
        self.encode_step = torch.compile(self.model.encode) if compile else None

    def warm_up(self) -> None:
        """Decode small batches of different shapes (no end-of-text stop, so every step runs): a compiled
        model then does its compiles, and the recompiles that make the batch, the cache length and the padding
        symbolic, now rather than in a user's request."""
        settings = SamplingSettings(max_new_tokens=3, temperature=0)
        longest = self.block_size - 1
        for lengths in ((2,), (2, 2), (3, 2)):  # one row; rows without padding; left-padded rows
            prompts = [[self.start] * min(length, longest) for length in lengths]
            decode(self.model, prompts, settings, row_generators(0, [(0, i) for i in range(len(prompts))]),
                   eos_id=None, banned=(), encode_step=self.encode_step)

    def generate(self, prompts: list[str], settings: SamplingSettings,
                 on_token: Callable[[int, str], None] | None = None, *, names: list[str] | None = None) -> list[str]:
        """One completion per prompt: only the new text, ending before </s> or the first stop string.

        ``on_token(index, text)`` receives each settled piece of prompt ``index``'s completion as it is
        generated (their concatenation is the returned text). The n-th copy of a prompt in ``prompts``
        samples with its own random stream, seeded by (seed, the prompt's text, n): a completion depends
        on the seed, not on the other prompts of the batch, and different prompts draw independently.
        ``names`` label the prompts in messages (default "prompt 1", ...); a prompt given several times
        is reported once.
        """
        names = names or [f"prompt {i + 1}" for i in range(len(prompts))]
        first: dict[str, list[int]] = {}
        for name, prompt in zip(names, prompts):
            if prompt not in first:
                first[prompt] = self.encode_prompt(prompt, name)
        return [reply.text for reply in self.generate_ids([first[p] for p in prompts], prompts, settings, on_token,
                                                          names=names)]

    def generate_ids(self, encoded: list[list[int]], keys: list[str], settings: SamplingSettings,
                     on_token: Callable[[int, str], None] | None = None, *, names: list[str]) -> list[Reply]:
        """``generate`` of inputs already encoded (``keys``: the text each was made from, which seeds its sampling:
        the prompt, or a conversation's rendering)."""
        copies: Counter = Counter()
        streams = []
        for key in keys:
            streams.append((prompt_key(key), copies[key]))
            copies[key] += 1
        generators = row_generators(settings.seed, streams)
        prompts = keys
        results: list[Reply] = [Reply("", "", [])] * len(prompts)
        context_hits: list[str] = []
        # Similar lengths together: less padding. Rows do not influence each other, so order is free.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        progress = reporter.task("generating", total=len(prompts), unit="prompts") \
            if len(prompts) > self.batch_size else nullcontext()
        with progress as task:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                answers = self.generate_encoded([encoded[i] for i in chunk], settings, [generators[i] for i in chunk],
                                                None if on_token is None else [_bind(on_token, i) for i in chunk])
                for index, (text, reason, ids) in zip(chunk, answers):
                    results[index] = Reply(text, reason, ids)
                    if reason == STOP_CONTEXT:
                        context_hits.append(names[index])
                if task is not None:
                    task.advance(len(chunk))
        if context_hits:
            shown = ", ".join(dict.fromkeys(context_hits[:5])) + (", ..." if len(context_hits) > 5 else "")
            reporter.warn(f"{shown}: stopped at the model's context ({self.block_size} tokens) before "
                          f"--max-new-tokens {settings.max_new_tokens}")
        return results

    def generate_encoded(self, encoded: list[list[int]], settings: SamplingSettings,
                         generators: list[torch.Generator], on_text: list[Callable[[str], None] | None] | None,
                         cancelled: Callable[[int], bool] | None = None) -> list[tuple[str, str, list[int]]]:
        """(completion, why it stopped, its new ids) of each encoded prompt, decoded together; a row for which
        ``cancelled(row)`` turns True stops at its next token (a server's request that timed out)."""
        texts = [CompletionText(self.tokenizer, ids[-1], settings.stop, None if on_text is None else on_text[row])
                 for row, ids in enumerate(encoded)]
        # Decoding the text at every step is needed for stop strings and streaming only.
        watch = bool(settings.stop) or on_text is not None

        def should_stop(row: int, ids: list[int]) -> bool:
            return bool(cancelled is not None and cancelled(row)) or (watch and texts[row].update(ids))

        decoded = decode(self.model, encoded, settings, generators, eos_id=self.stop_ids, banned=self.banned,
                         should_stop=should_stop if watch or cancelled is not None else None,
                         encode_step=self.encode_step)
        results = []
        for text, result in zip(texts, decoded):
            text.update(result.ids)
            results.append((text.finish(), result.reason, result.ids))
        return results


def _bind(on_token: Callable[[int, str], None], index: int) -> Callable[[str], None]:
    return lambda text: on_token(index, text)
