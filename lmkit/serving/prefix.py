"""Prefix reuse for continuous batching: the keys and values of prompt prefixes already computed (a shared system
prompt, a chat's earlier turns), kept in blocks of ``BLOCK`` tokens so that a new prompt starting with the same
tokens copies them into its slot and computes only the rest.

A block is found by the digest of every token up to its end (a chain: each block's digest extends its parent's),
so a block is only ever reused after exactly the same tokens, at the same positions. The cache holds at most
``capacity`` tokens and forgets the least recently used blocks first; a hit refreshes a chain from its end to its
root, so that a chain's deeper blocks are forgotten before the blocks they extend (as vLLM's and SGLang's radix
caches evict leaves first).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Callable

import torch

BLOCK = 16  # tokens per cached block: vLLM's default block size


class PrefixCache:
    """Blocks of computed keys and values by the digest of the tokens up to their end, least recently used first.
    ``lookups`` and ``hits`` count prompt tokens (of whole blocks) looked for and found, as vLLM's
    prefix-cache queries and hits do."""

    def __init__(self, capacity: int, block: int = BLOCK):
        self.capacity, self.block = capacity, block
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.lookups = self.hits = 0

    @property
    def tokens(self) -> int:
        """Tokens held now (at most ``capacity``)."""
        return len(self._blocks) * self.block

    def digests(self, ids: list[int]) -> list[bytes]:
        """The key of each whole block of ``ids`` that a prompt can reuse: its last token is always computed (its
        logits give the first new token), so a block ending at the prompt's end is never one."""
        digests, previous = [], b""
        for end in range(self.block, len(ids), self.block):
            previous = hashlib.blake2b(previous + array("q", ids[end - self.block:end]).tobytes(),
                                       digest_size=16).digest()
            digests.append(previous)
        return digests

    def lookup(self, digests: list[bytes]) -> list[torch.Tensor]:
        """The stored blocks of the longest run of ``digests`` from the first that the cache holds, refreshed."""
        if self.capacity < self.block:
            return []
        found = []
        for digest in digests:
            stored = self._blocks.get(digest)
            if stored is None:
                break
            found.append(stored)
        self.lookups += len(digests) * self.block
        self.hits += len(found) * self.block
        self._refresh(digests[:len(found)])
        return found

    def store(self, chain: list[bytes], read: Callable[[int], torch.Tensor]) -> None:
        """Hold every block of ``chain`` (digests from the first block on; ``read(i)``: the keys and values of
        block i, asked for the blocks not held yet), then forget the least recently used beyond the capacity."""
        if self.capacity < self.block:
            return
        for index, digest in enumerate(chain):
            if digest not in self._blocks:
                self._blocks[digest] = read(index)
        self._refresh(chain)
        while self.tokens > self.capacity:
            self._blocks.popitem(last=False)

    def _refresh(self, chain: list[bytes]) -> None:
        for digest in reversed(chain):  # the root last: the most recently used
            if digest in self._blocks:
                self._blocks.move_to_end(digest)
