"""``evaluate --task preference``: how often a causal model (a text, sft or chat model) ranks the chosen reply of a
held-out preference pair (lmkit.data.preferences) above the rejected one.

Each reply is scored by its summed log-probability given the prompt, both framed as ``generate`` and ``chat`` frame
them (lmkit.generation.prompts), the reply's ending token included, as preference tuning trains on them. With
``--reference CKPT`` a reply's score is DPO's implicit reward instead (Rafailov et al. 2023): the model's
log-probability minus the reference's, with beta 1 (finetune's --beta only scales it), so that what is measured is
what preference tuning changed rather than what the model preferred to begin with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmkit.checkpoint import Checkpoint, read_reference
from lmkit.data.preferences import read_preferences
from lmkit.errors import UserError
from lmkit.evaluation.scoring import Inference, Span, score_spans
from lmkit.evaluation.tasks import TaskOutcome
from lmkit.generation.prompts import PromptFormat
from lmkit.progress import reporter
from lmkit.tasks.base import JSONL, EvalPlan, Evaluation, read_examples

METRICS = ("preference_accuracy", "reward_margin", "chosen_logp", "rejected_logp")


@dataclass(frozen=True)
class ScoredPair:
    """A held-out pair as the model reads it: the prompt's ids, and each reply's with the token that ends it."""

    where: str
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def spans(self) -> tuple[Span, Span]:
        return (Span(np.array(self.prompt + self.chosen), len(self.chosen)),
                Span(np.array(self.prompt + self.rejected), len(self.rejected)))


def _pairs(plan: EvalPlan, tokenizer) -> list[ScoredPair]:
    frame = PromptFormat(plan.checkpoint)
    block = plan.checkpoint.model_config.block_size

    def read(path: str, left: int) -> list[ScoredPair]:
        found = []
        for pair in read_preferences(path, left):
            prompt, chosen = frame.encode_exchange(pair.prompt, pair.chosen, pair.where)
            _, rejected = frame.encode_exchange(pair.prompt, pair.rejected, pair.where)
            longest = len(prompt) + max(len(chosen), len(rejected)) - 1
            if longest > block:
                raise UserError(f"{pair.where}: {longest + 1} tokens (prompt and the longer reply), more than the "
                                f"model's context ({block} + 1) holds; shorten the pair")
            found.append(ScoredPair(pair.where, prompt, chosen, rejected))
        return found

    return read_examples(plan, read)


def _reference(plan: EvalPlan) -> Checkpoint:
    """--reference: a causal model over the evaluated model's tokens and context."""
    return read_reference(plan.config.reference, plan.checkpoint, "the implicit reward compares the two models' "
                          "log-probabilities of the same tokens", plan.checkpoint.model_config.block_size,
                          "the evaluated model's block size")


def _check(plan: EvalPlan) -> None:
    if plan.config.reference:
        _reference(plan)


def _scores(inference: Inference, pairs: list[ScoredPair], what: str) -> np.ndarray:
    """(N, 2): each pair's chosen and rejected reply's summed log-probability (exactly rounded sums)."""
    spans = [span for pair in pairs for span in pair.spans()]
    with reporter.task(f"scoring ({what})", total=len(spans), unit="replies") as task:
        scored = score_spans(inference, spans, task.advance)
    return np.array([score.logprob for score in scored], dtype=np.float64).reshape(-1, 2)


def _run(plan: EvalPlan, inference: Inference, tokenizer, pairs: list[ScoredPair]) -> TaskOutcome:
    logps = _scores(inference, pairs, "model")
    rewards = logps
    method = {"method": "each reply's summed log-probability (its tokens and the token that ends it) given the "
                        "prompt, framed as generate frames it; a pair is ranked right when the chosen reply's is "
                        "strictly higher"}
    if plan.config.reference:
        reference = _reference(plan)
        model = reference.inference_model().to(inference.device)
        scorer = Inference(model, inference.device, inference.precision, inference.batch_size, reference.specials)
        rewards = logps - _scores(scorer, pairs, "reference")
        inference.tokens, inference.seconds = inference.tokens + scorer.tokens, inference.seconds + scorer.seconds
        method = {"method": "DPO's implicit reward, beta 1: each reply's summed log-probability given the prompt "
                            "minus the reference's; a pair is ranked right when the chosen reply's is strictly "
                            "higher", "reference": {"path": str(reference.path), "id": reference.artifact.id}}
    right = rewards[:, 0] > rewards[:, 1]
    margins = rewards[:, 0] - rewards[:, 1]
    metrics = {"preference_accuracy": float(right.mean()), "reward_margin": math.fsum(margins) / len(pairs),
               "chosen_logp": math.fsum(logps[:, 0]) / len(pairs), "rejected_logp": math.fsum(logps[:, 1]) / len(pairs)}
    predictions = [{"id": pair.where, "chosen_logp": float(logp[0]), "rejected_logp": float(logp[1]),
                    "reward_margin": float(margin), "ranked_right": bool(ok)}
                   for pair, logp, margin, ok in zip(pairs, logps, margins, right, strict=True)]
    counts = {"pairs": len(pairs), "ties": int((rewards[:, 0] == rewards[:, 1]).sum())}
    return TaskOutcome(len(pairs), metrics, method, counts, predictions)


PREFERENCE = Evaluation("preference", METRICS, JSONL, _run, needs="a causal language model", load=_pairs,
                        check=_check, flags=("reference",))
