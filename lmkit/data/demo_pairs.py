"""The demo corpus's labeled text pairs (``pairs.jsonl``, ``pairs-test.jsonl``): does this description belong
to this summary? For sequence-pair classification (``lmkit preprocess --text-pair-field``).

Each eligible docstring gives one example: its first line as ``text`` and the rest of it as ``text_pair``,
labeled ``match``, or (for a seeded random half of them) the rest of another docstring, ``mismatch``. The
mismatched rests are the same docstrings' rests passed round one place in a shuffled order, so every rest
appears exactly once in the file: no two examples share a text, and near-dedup keeps them all.
"""

from __future__ import annotations

import random

LABELS = ("match", "mismatch")
_MIN_FIRST = 20    # characters of a first line: a summary, not "Constructor."
_MIN_REST = 40     # characters of the rest: a description
_MAX_REST = 400    # a description's beginning is enough, and keeps the demo's inputs short


def _split(text: str) -> tuple[str, str]:
    first, _, rest = text.partition("\n")
    return first.strip(), rest.strip()[:_MAX_REST].strip()


def pair_records(records: list[dict], seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test) pair records from docstring records ({"text", "meta": {"name"}}): balanced match/mismatch
    labels, every tenth example held out for the test file."""
    parts = [(record["meta"]["name"], *_split(record["text"])) for record in records]
    parts = [part for part in parts if len(part[1]) >= _MIN_FIRST and len(part[2]) >= _MIN_REST]
    order = random.Random(seed).sample(range(len(parts)), len(parts))
    mismatched = order[len(order) // 2:]  # a random half, in random order: each takes the next one's rest
    other = {index: mismatched[(k + 1) % len(mismatched)] for k, index in enumerate(mismatched)}
    examples = []
    for index, (name, first, _rest) in enumerate(parts):
        partner = other.get(index, index)
        examples.append({"text": first, "text_pair": parts[partner][2], "label": LABELS[partner != index],
                         "meta": {"name": name, "pair_of": parts[partner][0]}})
    return [e for i, e in enumerate(examples) if i % 10 != 9], examples[9::10]
