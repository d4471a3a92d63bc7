"""Preference tuning on pairs of replies to a prompt, the chosen one preferred over the rejected one
(lmkit.data.preferences): DPO against a frozen reference, and ORPO, which needs none.

DPO (Rafailov et al. 2023, "Direct Preference Optimization") trains the policy pi so that its implicit reward
beta * (log pi(y|x) - log pi_ref(y|x)) ranks the chosen reply above the rejected one:
loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), the log-probabilities summed over each reply's
tokens. The reference (the base by default, or ``--reference``) never changes, so its log-probabilities of every
pair are computed once when the objective is built, in fp32 and eval mode, kept in memory and the reference model
freed: training holds one model, as supervised finetuning does.

ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model") is the reference-free
method lmkit offers, picked over SimPO because its loss keeps a supervised term: the negative log-likelihood of
the chosen reply, plus lambda times -log sigmoid of the log odds ratio of the chosen over the rejected reply (odds
of the length-normalized probability, p / (1 - p)). The NLL term keeps the chosen replies likely, so ORPO can start
from a base that never saw the replies' format; it needs one forward pass per pair and no reference model at all.
``--beta`` is ORPO's lambda, as TRL's ORPOConfig calls it beta.

A pair's chosen and rejected replies are right-padded together into one forward pass (2B rows for B pairs); a
micro-batch's loss is the mean over its pairs and ``targets`` holds one entry per pair, so the loop weighs
micro-batches by their pairs. Pairs are tokenized by lmkit.generation.prompts.PromptFormat, exactly as
``generate`` and ``chat`` read the prompt and write the reply (the reply ends with the token that ends a reply),
and a pair longer than ``--seq-len`` is refused, never cut. ``--pack`` is not offered: what it would save is the
padding between a batch's rows, while a pair's two rows must stay apart (each reply sees the prompt, not the
other reply), so a packed row would need a mask per pair for little gain on short replies.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.checkpoint import Checkpoint, read_reference
from lmkit.data.preferences import PreferencePair, read_preferences
from lmkit.errors import UserError
from lmkit.generation.prompts import PromptFormat
from lmkit.progress import reporter
from lmkit.training.objectives.base import (
    BatchLayout,
    Built,
    Count,
    ObjectiveInputs,
    ObjectiveSpec,
    held_out,
    indices_at,
    kept_kind,
    register,
)
from lmkit.training.objectives.objective_options import HeldOutOptions
from lmkit.vocab import IGNORE_INDEX

METRICS = ("val_loss", "val_preference_accuracy", "val_reward_margin", "val_chosen_logp", "val_rejected_logp")
# ORPO's log(1 - p) needs p < 1: a mean log-probability is kept this far below 0 (float32 resolves it).
_BELOW_ZERO = 1e-6


@dataclass(frozen=True)
class ORPOOptions(HeldOutOptions):
    """What ORPO reads besides the held-out split: the flag of the same name."""

    beta: float             # lambda, the weight of the odds-ratio term against the chosen replies' NLL


@dataclass(frozen=True)
class DPOOptions(ORPOOptions):
    """What DPO reads besides the held-out split: the flags of the same names."""

    reference: str | None   # the frozen reference checkpoint (None: the base)


@dataclass(frozen=True)
class PairExample:
    """A preference pair as token ids: the prompt's, and each reply's with the token that ends it."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    where: str

    def rows(self) -> tuple[list[int], list[int]]:
        return self.prompt + self.chosen, self.prompt + self.rejected


def encode_pairs(pairs: list[PreferencePair], frame: PromptFormat, seq_len: int) -> list[PairExample]:
    """The pairs as the model reads them; one whose prompt and longer reply exceed ``seq_len`` inputs is refused."""
    examples = []
    for pair in pairs:
        prompt, chosen = frame.encode_exchange(pair.prompt, pair.chosen, pair.where)
        prompt_again, rejected = frame.encode_exchange(pair.prompt, pair.rejected, pair.where)
        if prompt_again != prompt:  # a chat template that renders the prompt by its reply: not a pair of replies
            raise UserError(f"{pair.where}: the chat template renders the prompt differently before each reply")
        longest = len(prompt) + max(len(chosen), len(rejected)) - 1  # inputs: every token but the last
        if longest > seq_len:
            raise UserError(f"{pair.where}: {longest + 1} tokens (prompt and the longer reply), more than the window "
                            f"(--seq-len {seq_len}) holds; shorten the pair or raise --seq-len (pairs are never cut)")
        examples.append(PairExample(prompt, chosen, rejected, pair.where))
    return examples


def pair_batch(examples: list[PairExample], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """B pairs as one batch of 2B right-padded rows (chosen replies first, then rejected): ``idx`` the inputs,
    ``labels`` the reply tokens each position predicts (IGNORE_INDEX on the prompt and padding), ``targets`` one
    entry per pair (the loop weighs micro-batches by its count)."""
    rows = [example.rows()[0] for example in examples] + [example.rows()[1] for example in examples]
    prompts = [len(example.prompt) for example in examples] * 2
    width = max(len(row) for row in rows) - 1
    idx = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        n = len(row) - 1
        idx[r, :n] = torch.tensor(row[:-1], dtype=torch.long)
        labels[r, prompt - 1:n] = torch.tensor(row[prompt:], dtype=torch.long)  # position t predicts token t + 1
    return {"idx": idx.to(device), "labels": labels.to(device),
            "targets": torch.zeros(len(examples), dtype=torch.long, device=device)}


def reply_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability, token count) of each row's reply (2B,), in float32 whatever the autocast. The
    float32 log-softmax runs on the reply positions alone (the prompts and padding need none), and the sums are
    taken over a dense (2B, T) tensor rather than scattered, so that they do not depend on atomics' order."""
    logits, _ = model(batch["idx"])  # (2B, T, V)
    labels = batch["labels"]
    scored = labels != IGNORE_INDEX
    picked = torch.log_softmax(logits[scored].float(), dim=-1).gather(-1, labels[scored][:, None]).squeeze(-1)
    logprobs = torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device)
    logprobs[scored] = picked
    return logprobs.sum(dim=-1), scored.sum(dim=-1)


def dpo_losses(logps: torch.Tensor, reference: torch.Tensor, beta: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's (loss, chosen reward, rejected reward) of each pair (B,), from the 2B rows' summed log-probs (chosen
    rows first) and the reference's (B, 2): reward = beta * (log pi - log pi_ref)."""
    half = len(logps) // 2
    chosen = beta * (logps[:half] - reference[:, 0])
    rejected = beta * (logps[half:] - reference[:, 1])
    return -F.logsigmoid(chosen - rejected), chosen, rejected


def orpo_losses(logps: torch.Tensor, counts: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO's (loss, chosen reward, rejected reward) of each pair (B,): the chosen reply's mean token NLL plus beta
    (lambda) times -log sigmoid(log odds(chosen) - log odds(rejected)), odds p / (1 - p) of the length-normalized
    probability p. TRL averages the NLL over a batch's tokens; lmkit over each pair's, so that a step's loss is the
    mean over pairs however they fall into micro-batches. The rewards are TRL's: beta times the mean log-prob."""
    half = len(logps) // 2
    mean = logps / counts.clamp(min=1)
    mean_chosen, mean_rejected = mean[:half], mean[half:]
    log_odds = (mean_chosen - mean_rejected) - (_log1m_exp(mean_chosen) - _log1m_exp(mean_rejected))
    losses = -mean_chosen - beta * F.logsigmoid(log_odds)
    return losses, beta * mean_chosen, beta * mean_rejected


def _log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 (expm1)."""
    return torch.log(-torch.expm1(x.clamp(max=-_BELOW_ZERO)))


class PreferenceTuning:
    """DPO (``reference`` given: the reference's summed log-probs of each train and validation pair's chosen and
    rejected reply, (N, 2) each) or ORPO (None): the pairs, their batches at global sample positions, validation
    over the held-out pairs and the training steps' figures."""

    def __init__(self, train: list[PairExample], validation: list[PairExample], layout: BatchLayout, seed: int,
                 device: torch.device, pad: int, beta: float, reference: dict[str, torch.Tensor] | None = None):
        self.name = "dpo" if reference is not None else "orpo"
        self.train, self.validation, self.pad, self.beta = train, validation, pad, beta
        self.layout, self.seed, self.device = layout, seed, device
        self.reference = None if reference is None else {which: values.to(device)
                                                         for which, values in reference.items()}
        self.train_windows = Count(len(train))
        self.val_windows = Count(len(validation)) if validation else None
        self.tokens_per_sample = max(1, round(float(np.mean([sum(map(len, e.rows())) - 2 for e in train]))))
        # The training steps' figures since the last logged step, on the device: pairs ranked right, margin, pairs.
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)

    def _batch(self, examples: list[PairExample], positions: list[int], which: str) -> dict[str, torch.Tensor]:
        """The pairs at ``positions`` of the ``which`` ("train", "validation") pairs, with their reference's."""
        batch = pair_batch(examples, self.pad, self.device)
        if self.reference is not None:
            batch["reference"] = self.reference[which][torch.tensor(positions, dtype=torch.long, device=self.device)]
        return batch

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        positions = [int(i) for i in indices_at(len(self.train), self.layout, self.seed, step, micro, rank)]
        return self._batch([self.train[i] for i in positions], positions, "train")

    def _losses(self, model: nn.Module, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, chosen reward, rejected reward) of each pair (B,), and the 2B rows' summed log-probs."""
        logps, counts = reply_logprobs(model, batch)
        if self.reference is not None:
            return (*dpo_losses(logps, batch["reference"], self.beta), logps)
        return (*orpo_losses(logps, counts, self.beta), logps)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        losses, chosen, rejected, _ = self._losses(model, batch)
        if torch.is_grad_enabled():  # a training step's (a range test's, a precision probe's): the logged figures
            with torch.no_grad():
                self._sums[0] += (chosen > rejected).sum()
                self._sums[1] += (chosen - rejected).sum().double()
                self._sums[2] += len(losses)
        return losses.mean()

    def train_metrics(self) -> dict[str, float]:
        """Reward accuracy (the share of pairs whose chosen reply has the higher reward) and the mean reward
        margin of the training pairs since the last logged step (this rank's); then reset."""
        correct, margin, pairs = self._sums.tolist()
        self._sums.zero_()
        if not pairs:
            return {}
        return {"reward_accuracy": correct / pairs, "reward_margin": margin / pairs}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        """The held-out pairs' mean loss, share ranked right, reward margin and summed log-probs of each reply."""
        if not self.validation:
            return {}
        size = self.layout.micro_batch
        count = len(self.validation) if not max_batches else min(len(self.validation), max_batches * size)
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        for start in range(0, count, size):
            positions = list(range(start, min(start + size, count)))
            losses, chosen, rejected, logps = self._losses(model, self._batch(
                [self.validation[i] for i in positions], positions, "validation"))
            half = len(losses)
            sums += torch.stack([losses.sum().double(), (chosen > rejected).sum().double(),
                                 (chosen - rejected).sum().double(), logps[:half].sum().double(),
                                 logps[half:].sum().double()])
        return dict(zip(METRICS, (sums / count).tolist(), strict=True))


# -- building --------------------------------------------------------------------------------------------------

def _reference(options: DPOOptions, inputs: ObjectiveInputs) -> Checkpoint:
    """The frozen reference: ``--reference`` (a causal model over the base's tokens), or the base."""
    if not options.reference:
        return inputs.base
    return read_reference(options.reference, inputs.base, "DPO compares the two models' log-probabilities of the "
                          "same tokens", inputs.seq_len, "--seq-len")


@torch.no_grad()
def reference_logprobs(model: nn.Module, examples: list[PairExample], pad: int, device: torch.device,
                       batch_size: int) -> torch.Tensor:
    """(N, 2): the summed log-probabilities of each pair's chosen and rejected reply under ``model`` (eval mode,
    fp32, batches of ``batch_size`` pairs in order)."""
    model.eval()
    found = []
    with reporter.task("reference log-probabilities", total=len(examples), unit="pairs") as task:
        for start in range(0, len(examples), batch_size):
            batch = pair_batch(examples[start:start + batch_size], pad, device)
            logps, _ = reply_logprobs(model, batch)
            found.append(logps.view(2, -1).T)  # (B, 2)
            task.advance(len(batch["targets"]))
    return torch.cat(found).double().cpu() if found else torch.zeros((0, 2), dtype=torch.float64)


def _pairs(inputs: ObjectiveInputs) -> tuple[list[PairExample], list[PairExample], int]:
    """The file's pairs tokenized as the base reads them, split into (train, validation); the pad id."""
    if inputs.base is None:
        raise UserError(f"{inputs.data}: preference tuning starts from a checkpoint (lmkit finetune BASE ...)")
    frame = PromptFormat(inputs.base)
    examples = encode_pairs(read_preferences(inputs.data), frame, inputs.seq_len)
    train, validation = held_out(examples, inputs.options, inputs.seed, inputs.notes, "pairs")
    return train, validation, frame.tokenizer.specials.pad


def _build_dpo(inputs: ObjectiveInputs[DPOOptions]) -> Built:
    options = inputs.options
    reference = _reference(options, inputs)
    train, validation, pad = _pairs(inputs)
    model = reference.inference_model().to(inputs.device)
    cached = {which: reference_logprobs(model, examples, pad, inputs.device, inputs.layout.micro_batch)
              for which, examples in (("train", train), ("validation", validation))}
    del model  # training holds the policy alone
    gc.collect()
    if inputs.device.type == "cuda":
        torch.cuda.empty_cache()
    inputs.notes.append(f"DPO, beta {options.beta:g}: reference log-probabilities of {len(train) + len(validation)} "
                        f"pairs computed once with {reference.path}")
    objective = PreferenceTuning(train, validation, inputs.layout, inputs.seed, inputs.device, pad, options.beta,
                                 cached)
    return Built(objective, kept_kind(inputs.base))


def _build_orpo(inputs: ObjectiveInputs[ORPOOptions]) -> Built:
    train, validation, pad = _pairs(inputs)
    inputs.notes.append(f"ORPO, lambda (--beta) {inputs.options.beta:g}: no reference model")
    objective = PreferenceTuning(train, validation, inputs.layout, inputs.seed, inputs.device, pad,
                                 inputs.options.beta)
    return Built(objective, kept_kind(inputs.base))


register(ObjectiveSpec("dpo", ("gpt", "lstm"), _build_dpo, "direct preference optimization on chosen/rejected pairs",
                       metrics=METRICS, unit="pairs", options=DPOOptions))
register(ObjectiveSpec("orpo", ("gpt", "lstm"), _build_orpo, "odds-ratio preference optimization (no reference) on "
                       "chosen/rejected pairs", metrics=METRICS, unit="pairs", options=ORPOOptions))
