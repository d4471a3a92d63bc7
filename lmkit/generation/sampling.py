"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p, min-p, and the draw.

Pure functions of tensors, tested directly on fixed distributions. The draw uses one uniform number per
row from that row's own ``torch.Generator``, so a row's tokens do not depend on its batch neighbours.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from lmkit.generation.settings import SamplingSettings


def prompt_key(prompt: str) -> int:
    """A stable 64-bit number of a prompt's text (Python's hash() changes between runs)."""
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "little")


def row_generators(seed: int, streams: list[tuple[int, ...]]) -> list[torch.Generator]:
    """One CPU generator per row, seeded from (seed, *stream): rows with equal streams draw the same numbers."""
    generators = []
    for stream in streams:
        # SeedSequence mixes the numbers into a well-spread 64-bit seed (nearby seeds give unrelated streams).
        state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return generators


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019), as in Hugging Face transformers: the logit of each
    token already seen is divided by ``penalty`` when positive and multiplied by it when negative, so
    penalty > 1 always makes it less likely. logits (B, V) float, seen (B, V) bool."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filtered_probs(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Probabilities (B, V) after top-k, then top-p, then min-p, renormalized; logits (B, V) already divided
    by the temperature. The most likely token always survives."""
    logits = logits.float()
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the more likely tokens
        # Drop a token when the more likely ones already reach top_p: the smallest set reaching it stays.
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, before >= top_p)
        probs = probs.masked_fill(drop, 0.0)
    if min_p > 0.0:
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def sample_from(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: for each row of probs (B, V), the token where the cumulative probability first
    exceeds that row's uniform number in [0, 1). A token of probability 0 is never chosen."""
    cdf = probs.double().cumsum(dim=-1)  # (B, V); double: the sum of many small terms stays accurate
    chosen = torch.searchsorted(cdf, uniforms.to(cdf)[:, None] * cdf[:, -1:], right=True).squeeze(1)  # (B,)
    # u * total < total, so chosen < V in exact arithmetic; rounding could still step past the last token
    # with probability > 0, which is the one to take then.
    last = probs.shape[-1] - 1 - torch.argmax((probs.flip(-1) > 0).to(torch.int8), dim=-1)  # (B,)
    return torch.minimum(chosen, last)


def next_tokens(logits: torch.Tensor, settings: SamplingSettings, seen: torch.Tensor | None,
                generators: list[torch.Generator]) -> torch.Tensor:
    """The next token id (B,) of each row of logits (B, V); ``seen`` (B, V) marks the tokens of the prompt and
    output so far (needed when a repetition penalty is set); one generator per row."""
    logits = logits.float()
    if settings.repetition_penalty != 1.0:
        logits = penalize_repetition(logits, seen, settings.repetition_penalty)
    if settings.greedy:
        return logits.argmax(dim=-1)
    probs = filtered_probs(logits / settings.temperature, settings.top_k, settings.top_p, settings.min_p)
    uniforms = torch.cat([torch.rand(1, generator=g) for g in generators]).to(probs.device)  # (B,)
    return sample_from(probs, uniforms)


def next_tokens_per_row(logits: torch.Tensor, settings: list[SamplingSettings], seen: torch.Tensor | None,
                        generators: list[torch.Generator]) -> torch.Tensor:
    """``next_tokens`` with each row's own settings (continuous batching: requests of different settings share a
    step). Row i gets the token ``next_tokens(logits[i:i + 1], settings[i], ...)`` gives, from one draw of its own
    generator (none when greedy): rows of equal settings are chosen together, and every step above works row by
    row, so a row's numbers do not depend on its neighbours."""
    groups: dict[tuple, list[int]] = {}
    for row, each in enumerate(settings):
        key = (each.temperature, each.top_k, each.top_p, each.min_p, each.repetition_penalty)
        groups.setdefault(key, []).append(row)
    if len(groups) == 1:
        return next_tokens(logits, settings[0], seen, generators)
    chosen = torch.empty(len(settings), dtype=torch.long, device=logits.device)
    for rows in groups.values():
        index = torch.tensor(rows, device=logits.device)
        chosen[index] = next_tokens(logits[index], settings[rows[0]], None if seen is None else seen[index],
                                    [generators[row] for row in rows])
    return chosen
