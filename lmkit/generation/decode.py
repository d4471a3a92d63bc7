"""The decoding loop of a causal language model (GPT or LSTM): a batch of token-id prompts in, new ids out.

Prompts of different lengths are left-padded into one batch with an attention mask: every row's last
real token is in the last column, so each step appends one column for all rows. With the cache (the
default) a step runs the model on that one new column; without it (the reference path, for tests and
the benchmark) it reruns the whole sequence. Rows that finish leave the batch, so a long row does not
keep paying for short ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import torch
from torch import nn

from lmkit.generation.sampling import next_tokens
from lmkit.generation.settings import SamplingSettings
from lmkit.vocab import PAD_ID

# Why a row stopped.
STOP_EOS, STOP_STRING, STOP_LENGTH, STOP_CONTEXT = "eos", "stop", "length", "context"


@dataclass
class Decoded:
    ids: list[int]        # the new tokens (without the </s> or end of turn that ended them)
    reason: str           # STOP_EOS, STOP_STRING (should_stop said so), STOP_LENGTH (max_new_tokens), STOP_CONTEXT
    stop_id: int | None = None  # with STOP_EOS: which of the stop ids ended it (RL trains on it as a reply's end)


def left_pad(prompts: list[list[int]], device: torch.device, pad: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """idx (B, P) with each prompt at the right end, and the mask (B, P), True on real tokens (the padding
    id is never attended to: any id will do)."""
    width = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = True
    return idx.to(device), mask.to(device)


@torch.no_grad()
def decode(model: nn.Module, prompts: list[list[int]], settings: SamplingSettings,
           generators: list[torch.Generator], *, eos_id: int | Collection[int] | None, banned: tuple[int, ...],
           use_cache: bool = True,
           should_stop: Callable[[int, list[int]], bool] | None = None,
           encode_step: Callable[..., torch.Tensor] | None = None) -> list[Decoded]:
    """Continue each prompt (a list of ids, 1 to block_size - 1 of them) with up to max_new_tokens ids.

    ``model`` has ``encode(idx, attention_mask, cache)``, ``new_cache`` and ``lm_head`` (GPT, LSTM).
    ``eos_id`` and ``banned`` (ids never sampled) come from the tokenizer's Specials (``never_generated``:
    every special id but eos; lmkit's training data has only text and </s> as targets).
    ``generators``: one per prompt (see sampling.row_generators). A row ends at ``eos_id`` (or any of several
    ids: a chat model's end of turn, a generation_config's eos list; None: never),
    at max_new_tokens, when the model's context (block_size positions) is full, or when
    ``should_stop(row, ids_so_far)`` returns True (called after each new token). ``encode_step``: what runs
    the decoding steps after the prompt (default ``model.encode``; a compiled copy of it, see Generator).
    """
    if len(generators) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(generators)} generators")
    block_size = model.config.block_size
    if any(not 0 < len(p) < block_size for p in prompts):
        raise ValueError(f"every prompt needs 1 to {block_size - 1} tokens (the model's block size is {block_size})")
    stops = frozenset(() if eos_id is None else (eos_id,) if isinstance(eos_id, int) else eos_id)
    device = model.tok_emb.weight.device
    idx, mask = left_pad(prompts, device)  # (B, P)
    budgets = [min(settings.max_new_tokens, block_size - len(p)) for p in prompts]
    cache = model.new_cache(len(prompts), idx.shape[1] + max(budgets)) if use_cache else None
    seen = None
    if settings.repetition_penalty != 1.0:
        seen = torch.zeros((len(prompts), model.config.vocab_size), dtype=torch.bool, device=device)
        seen.scatter_(1, idx, mask)  # padding scatters False
    generated: list[list[int]] = [[] for _ in prompts]
    reasons: list[str | None] = [None] * len(prompts)
    stopped_by: list[int | None] = [None] * len(prompts)
    rows = list(range(len(prompts)))  # the prompt index of each batch row still generating
    step_input = idx
    while rows:
        padded = not bool(mask.all())  # without padding, the model's fast unmasked path
        if use_cache:
            encode = model.encode if (encode_step is None or step_input is idx) else encode_step
            hidden = encode(step_input, attention_mask=mask if padded else None, cache=cache)
        else:
            hidden = model.encode(idx, attention_mask=mask if padded else None)
        logits = model.lm_head(model.head_input(hidden[:, -1])).float()  # (b, V)
        if banned:
            logits[:, list(banned)] = float("-inf")
        chosen = next_tokens(logits, settings, seen, [generators[r] for r in rows])  # (b,)
        keep = []
        for position, (row, token) in enumerate(zip(rows, chosen.tolist())):
            if token in stops:
                reasons[row], stopped_by[row] = STOP_EOS, token
                continue
            generated[row].append(token)
            if should_stop is not None and should_stop(row, generated[row]):
                reasons[row] = STOP_STRING
            elif len(generated[row]) >= budgets[row]:
                reasons[row] = STOP_LENGTH if len(generated[row]) >= settings.max_new_tokens else STOP_CONTEXT
            else:
                keep.append(position)
        if not keep:
            break
        if len(keep) < len(rows):  # finished rows leave the batch
            kept = torch.tensor(keep, device=device)
            rows = [rows[p] for p in keep]
            chosen, idx, mask = chosen[kept], idx[kept], mask[kept]
            if seen is not None:
                seen = seen[kept]
            if cache is not None:
                cache.select(kept)
        step_input = chosen[:, None]  # (b, 1)
        if not use_cache:
            idx = torch.cat([idx, step_input], dim=1)
        mask = torch.cat([mask, torch.ones_like(step_input, dtype=torch.bool)], dim=1)
        if seen is not None:
            seen.scatter_(1, step_input, True)
    return [Decoded(ids, reason, stop) for ids, reason, stop in zip(generated, reasons, stopped_by, strict=True)]
