"""The demo's arithmetic sets: two-digit additions, a task on which this machine can show a tiny model learn from
supervised finetuning, then from preferences and from rewards a program checks.

``What is 47 + 38?`` is answered ``85``. Every pair of two-digit operands is drawn at most once over the sets
(8,100 pairs; a seeded shuffle deals them out), so nothing held out was seen in training:

* ``arithmetic.jsonl``: prompt/response records, for ``finetune --task sft``;
* ``arithmetic-rl.jsonl``: prompt/answer records, for ``finetune --task grpo --reward number``;
* ``arithmetic-prefs.jsonl``: prompt/chosen/rejected records, the right sum chosen over a plausible wrong one (the
  carry forgotten, or off by one or ten: the errors a model that half knows addition makes), for ``--task dpo``;
* ``arithmetic-test.jsonl``: held-out problems with all of the fields above, one file for ``evaluate --task
  generate``, ``--task pass-at-k`` and ``--task preference``.
"""

from __future__ import annotations

import random

SIZES = {"arithmetic-test.jsonl": 300, "arithmetic.jsonl": 3000, "arithmetic-rl.jsonl": 1500,
         "arithmetic-prefs.jsonl": 1500}
SEED = 20261207


def _wrong(a: int, b: int, rng: random.Random) -> int:
    """A plausible wrong sum of a and b: the carry forgotten when there is one, else off by one or by ten."""
    right = a + b
    if (a % 10) + (b % 10) >= 10 and rng.random() < 0.5:
        return right - 10
    return right + rng.choice((-10, -1, 1, 10))


def _record(a: int, b: int, rng: random.Random, fields: tuple[str, ...]) -> dict:
    answer = str(a + b)
    full = {"prompt": f"What is {a} + {b}?", "response": answer, "answer": answer, "chosen": answer,
            "rejected": str(_wrong(a, b, rng))}
    return {key: full[key] for key in ("prompt", *fields)}


FIELDS = {"arithmetic-test.jsonl": ("response", "answer", "chosen", "rejected"), "arithmetic.jsonl": ("response",),
          "arithmetic-rl.jsonl": ("answer",), "arithmetic-prefs.jsonl": ("chosen", "rejected")}


def arithmetic_sets() -> dict[str, list[dict]]:
    """Each file's records (SIZES), from disjoint operand pairs, the same on every machine."""
    rng = random.Random(SEED)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    sets, at = {}, 0
    for name, size in SIZES.items():
        sets[name] = [_record(a, b, rng, FIELDS[name]) for a, b in pairs[at:at + size]]
        at += size
    return sets
