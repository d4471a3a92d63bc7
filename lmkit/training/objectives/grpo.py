"""RL with rewards a program checks: GRPO (Shao et al. 2024, "DeepSeekMath", section 4.1) over the prompts of a
JSONL file, each scored by a ``--reward`` (lmkit.evaluation.rewards).

Each training prompt is answered ``--group-size`` (k) times by the policy itself, sampled with lmkit's batched
KV-cache decoding (lmkit.generation.decode) in eval mode; each reply is rewarded, and its advantage is its reward
normalized within its group, (r - mean) / (std + eps) with the group's unbiased std (as TRL computes it). Dr. GRPO
(Liu et al. 2025) drops the std and the per-reply length mean as biases; lmkit keeps the paper's form. The loss is
the paper's, averaged over the replies of the batch:

    -1/|o| sum_t A * log p(o_t | q, o_<t)  [+ kl_coef * k3 KL to the reference, per token, as the paper's eq. 4]

with one update per sampled batch (on-policy), so the PPO ratio is 1 and its clipping never acts: the gradient of
A * log p is that of A * ratio. The reply's tokens include the stop id that ended it (the model learns to stop);
a reply cut at --max-new-tokens has none.

Exact resume: every reply of (step, micro-batch, rank, row) draws from its own generator seeded by (--seed, step,
micro, rank, row) (sampling.row_generators), and the prompts are the ones at the batch's global positions, so a
resumed run samples what the uninterrupted one would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.checkpoint import Checkpoint, read_reference
from lmkit.errors import UserError
from lmkit.evaluation.rewards import Reward, Score
from lmkit.generation.decode import STOP_EOS, Decoded, decode
from lmkit.generation.prompts import PromptFormat
from lmkit.generation.records import RewardPrompt, read_reward_prompts, score_reply
from lmkit.generation.sampling import row_generators
from lmkit.generation.settings import SamplingSettings
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

ADVANTAGE_EPS = 1e-4  # TRL's: a group whose rewards are all equal gets advantages 0, not 0 / 0


@dataclass(frozen=True)
class GRPOOptions(HeldOutOptions):
    """What GRPO reads besides the held-out split: the flags of the same names."""

    reward: str                  # the --reward spec (rewards.py's grammar)
    answer_field: str            # the JSONL field of the reference answer
    prompt_field: str            # and of the prompt (or a "messages" conversation, for a chat model)
    group_size: int              # k replies sampled per prompt
    max_new_tokens: int          # the longest reply
    sampling_temperature: float  # the temperature replies are sampled at
    kl_coef: float               # weight of the KL term to the reference (0: none, no reference loaded)
    reference: str | None        # the reference checkpoint (default: the base)


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, k) rewards -> (P, k) advantages: each reward less its group's mean, over the group's std (+ eps)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased (k - 1), as TRL; k >= 2 is enforced
    return (rewards - mean) / (std + ADVANTAGE_EPS)


def grpo_loss(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, ref_logp: torch.Tensor | None = None,
              kl_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The mean over replies of the per-token mean of -A * log p (+ kl_coef * KL), and the mean KL per reply.

    logp, ref_logp, mask: (N, T) the reply tokens' log-probabilities under the policy and the reference, True on
    reply tokens; advantages (N,). KL is the k3 estimator of the paper (Schulman 2020): exp(r - p) - (r - p) - 1,
    non-negative and unbiased."""
    mask = mask.to(logp.dtype)
    tokens = mask.sum(dim=1).clamp(min=1.0)
    per_token = -advantages[:, None] * logp
    kl = None
    if ref_logp is not None:
        delta = ref_logp - logp
        kl_tokens = (torch.exp(delta) - delta - 1.0) * mask
        per_token = per_token + kl_coef * kl_tokens
        kl = (kl_tokens.sum(dim=1) / tokens).mean().detach()
    return ((per_token * mask).sum(dim=1) / tokens).mean(), kl


def reply_logprobs(model: nn.Module, prompts: list[list[int]], replies: list[list[int]], pad: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) log-probabilities of each reply's tokens given its prompt (0 elsewhere), and the (N, T) mask of the
    reply tokens; one forward over the prompt + reply rows, right-padded (a causal model: padding after a row
    changes nothing before it)."""
    width = max(len(p) + len(r) for p, r in zip(prompts, replies, strict=True)) - 1
    idx = torch.full((len(prompts), width), pad, dtype=torch.long)
    targets = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        sequence = prompt + reply
        idx[row, :len(sequence) - 1] = torch.tensor(sequence[:-1])
        targets[row, len(prompt) - 1:len(sequence) - 1] = torch.tensor(reply)
    device = next(model.parameters()).device
    idx, targets = idx.to(device), targets.to(device)
    logits = model(idx)[0]  # (N, T, V)
    logp = -F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="none").view(targets.shape)  # (N, T), 0 where ignored
    return logp, targets != IGNORE_INDEX


def unwrapped(model: nn.Module) -> nn.Module:
    """The network inside DDP (``.module``) and torch.compile (``._orig_mod``): what decoding calls."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


class GRPO:
    """Group-normalized policy gradient on sampled replies; validation: greedy replies on held-out prompts."""

    name = "grpo"

    def __init__(self, train: list[RewardPrompt], validation: list[RewardPrompt], layout: BatchLayout, seed: int,
                 device: torch.device, prompts: PromptFormat, reward: Reward, options: GRPOOptions,
                 reference: nn.Module | None):
        self.train, self.validation, self.layout, self.seed, self.device = train, validation, layout, seed, device
        self.prompts, self.reward, self.options, self.reference = prompts, reward, options, reference
        self.group = options.group_size
        self.sampling = SamplingSettings(max_new_tokens=options.max_new_tokens,
                                         temperature=options.sampling_temperature)
        self.greedy = SamplingSettings(max_new_tokens=options.max_new_tokens, temperature=0.0)
        self.pad = prompts.tokenizer.specials.pad
        self.train_windows = Count(len(train))
        self.val_windows = Count(len(validation)) if validation else None
        # Tokens a prompt's replies read at most (the group's prompt + longest reply): for --max-tokens and speed.
        self.tokens_per_sample = self.group * (round(float(np.mean([len(p.ids) for p in train])))
                                               + options.max_new_tokens)
        self._last_step: int | None = None
        self._reset()

    # -- the figures logged per step (train_metrics) ---------------------------------------------------------
    def _reset(self) -> None:
        self._sums = {"reward": 0.0, "pass": 0.0, "reply_tokens": 0.0, "kl": 0.0, "sampling_s": 0.0, "step_s": 0.0}
        self._replies, self._kl_batches, self._steps = 0, 0, 0
        self._step_started: float | None = None
        self._paused = 0.0  # validation's seconds inside an open step

    def _close_step(self, now: float) -> None:
        if self._step_started is not None:
            self._sums["step_s"] += now - self._step_started - self._paused
            self._step_started = None

    def train_metrics(self) -> dict[str, float]:
        """Since the last logged step: mean reward, pass rate (the share of replies whose checking terms all scored
        above 0), mean reply length in tokens, KL to the reference (with --kl-coef), and seconds per step spent
        sampling and rewarding (sampling_s) and the rest of the step, learning (learning_s)."""
        self._close_step(time.perf_counter())
        if not self._replies:
            return {}
        n, steps, sums = self._replies, max(self._steps, 1), self._sums
        figures = {"reward": sums["reward"] / n, "pass_rate": sums["pass"] / n,
                   "reply_tokens": sums["reply_tokens"] / n}
        if self._kl_batches:
            figures["kl"] = sums["kl"] / self._kl_batches
        figures["sampling_s"] = sums["sampling_s"] / steps
        figures["learning_s"] = max(sums["step_s"] - sums["sampling_s"], 0.0) / steps
        self._reset()
        return figures

    # -- training --------------------------------------------------------------------------------------------
    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        """The micro-batch's prompts (their indices) and position; ``targets`` holds one entry per reply to come,
        so the loop weighs micro-batches by their replies."""
        if micro == 0:
            now = time.perf_counter()
            if self._last_step is None or step != self._last_step + 1:  # a precision probe before the run, a resume
                self._reset()
            self._close_step(now)
            self._last_step, self._step_started, self._paused = step, now, 0.0
            self._steps += 1
        chosen = indices_at(len(self.train), self.layout, self.seed, step, micro, rank)
        return {"prompts": torch.as_tensor(chosen, dtype=torch.long),
                "position": torch.tensor([step, micro, rank]),
                "targets": torch.zeros(len(chosen) * self.group, dtype=torch.long, device=self.device)}

    def _replies_to(self, policy: nn.Module, items: list[RewardPrompt], settings: SamplingSettings,
                    streams: list[tuple[int, ...]]) -> list[Decoded]:
        """Decode one reply per stream (``items`` in the streams' order) in eval mode, without gradients."""
        was_training = policy.training
        policy.eval()
        try:
            return decode(policy, [item.ids for item in items], settings, row_generators(self.seed, streams),
                          eos_id=self.prompts.stop_ids, banned=self.prompts.banned)
        finally:
            policy.train(was_training)

    def _score(self, item: RewardPrompt, decoded: Decoded) -> Score:
        return score_reply(self.prompts, self.reward, item, decoded.ids)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        started = time.perf_counter()
        policy = unwrapped(model)
        step, micro, rank = batch["position"].tolist()
        items = [self.train[i] for i in batch["prompts"].tolist() for _ in range(self.group)]  # k copies, in groups
        streams = [(step, micro, rank, row) for row in range(len(items))]
        decoded = self._replies_to(policy, items, self.sampling, streams)
        scores = [self._score(item, reply) for item, reply in zip(items, decoded, strict=True)]
        rewards = torch.tensor([s.value for s in scores], dtype=torch.float32).view(-1, self.group)
        advantages = group_advantages(rewards).flatten().to(self.device)
        self._sums["sampling_s"] += time.perf_counter() - started
        replies = [reply.ids + ([reply.stop_id] if reply.reason == STOP_EOS else []) for reply in decoded]
        prompts = [item.ids for item in items]
        logp, mask = reply_logprobs(model, prompts, replies, self.pad)
        ref_logp = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logp, _ = reply_logprobs(self.reference, prompts, replies, self.pad)
        loss, kl = grpo_loss(logp, mask, advantages, ref_logp, self.options.kl_coef)
        self._sums["reward"] += float(rewards.sum())
        self._sums["pass"] += sum(s.passed for s in scores)
        self._sums["reply_tokens"] += sum(len(r.ids) for r in decoded)
        self._replies += len(scores)
        if kl is not None:
            self._sums["kl"] += float(kl)
            self._kl_batches += 1
        return loss

    # -- validation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        """Greedy replies to the held-out prompts: val_pass_rate (pass@1, greedy), val_reward and the mean reply
        length val_reply_tokens."""
        if not self.validation:
            return {}
        started = time.perf_counter()
        policy = unwrapped(model)
        items = self.validation[:max_batches * self.layout.micro_batch] if max_batches else self.validation
        scores, lengths = [], []
        for start in range(0, len(items), self.layout.micro_batch):
            chunk = items[start:start + self.layout.micro_batch]
            streams = [(start + row,) for row in range(len(chunk))]  # unused by greedy decoding
            decoded = self._replies_to(policy, chunk, self.greedy, streams)
            scores += [self._score(item, reply) for item, reply in zip(chunk, decoded, strict=True)]
            lengths += [len(reply.ids) for reply in decoded]
        if self._step_started is not None:
            self._paused += time.perf_counter() - started
        return {"val_pass_rate": sum(s.passed for s in scores) / len(scores),
                "val_reward": sum(s.value for s in scores) / len(scores),
                "val_reply_tokens": sum(lengths) / len(lengths)}


def reference_model(inputs: ObjectiveInputs[GRPOOptions]) -> nn.Module | None:
    """The frozen reference of the KL term: --reference, else the base; None without --kl-coef."""
    options = inputs.options
    if options.kl_coef == 0:
        if options.reference:
            raise UserError("--reference: the KL term's reference model, read only with --kl-coef above 0; give "
                            "--kl-coef or drop --reference")
        return None
    reference: Checkpoint = inputs.base if not options.reference else read_reference(
        options.reference, inputs.base, "the KL term compares the two models' probabilities of the same tokens",
        inputs.seq_len, "--seq-len")
    model = reference.inference_model().to(inputs.device)
    model.requires_grad_(False)
    return model.eval()


def _build(inputs: ObjectiveInputs[GRPOOptions]) -> Built:
    options = inputs.options
    reward = Reward(options.reward, options.answer_field)
    prompts = PromptFormat(inputs.base, truncate="error")
    examples = read_reward_prompts(inputs.data, prompts, reward, options.prompt_field, inputs.seq_len)
    train, validation = held_out(examples, options, inputs.seed, inputs.notes, "prompts")
    reference = reference_model(inputs)
    inputs.notes.append(f"grpo: {options.group_size} replies per prompt at temperature "
                        f"{options.sampling_temperature:g}, at most {options.max_new_tokens} tokens each; --reward "
                        f"{options.reward}"
                        + (f"; KL to {options.reference or 'the base'} x {options.kl_coef:g}" if reference else ""))
    objective = GRPO(train, validation, inputs.layout, inputs.seed, inputs.device, prompts, reward, options, reference)
    return Built(objective, kept_kind(inputs.base))


register(ObjectiveSpec("grpo", ("gpt", "lstm"), _build, "RL with checkable rewards (GRPO) on prompts",
                       metric="val_pass_rate", metrics=("val_pass_rate", "val_reward", "val_reply_tokens"),
                       unit="prompts", options=GRPOOptions))
