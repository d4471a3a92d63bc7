"""Configuration of ``lmkit finetune``: every field is a flag and a key of ``--config``.

The training options are training.options'; this file adds the task, the model changes
(LoRA, freezing, a new student), distillation and the data settings, and re-declares the
defaults that finetuning sets differently from pretraining (below, under "finetuning's defaults").
Each task's objective reads its own settings (training/objectives/, e.g. ClassifyOptions); a setting of
another task is refused when given. ``resume=True`` marks what a resumed run must keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from lmkit.config import flag_name, option
from lmkit.data.instructions import DEFAULT_TEMPLATE
from lmkit.data.labeled import IMBALANCE_RATIO
from lmkit.stages.pretrain_config import PRESET_HELP
from lmkit.training.options import BATCH, MASKING, OPTIMIZATION, RUN, STOPPING, TrainingOptions

TASKS = ("auto", "classify", "sft", "chat", "qa", "clm", "mlm", "dpo", "orpo", "grpo")
METRICS = ("auto", "accuracy", "f1", "exact_match", "loss", "preference_accuracy", "pass_rate", "reward")
# Finetuning's length: at most DEFAULT_EPOCHS, evaluated twice an epoch and stopped after DEFAULT_PATIENCE
# evaluations (two epochs) without a better validation metric; final/ holds the best.
DEFAULT_EPOCHS = 10.0
DEFAULT_PATIENCE = 4
# The learning rate when none is given: scaled by the width (0.06 / d_model: 3e-4 at 200, 8e-5 at 768 as BERT-base
# finetunes), ten times that for LoRA's adapters, pretraining's scale from random weights.
LR_PER_WIDTH, LORA_LR_FACTOR = 0.06, 10.0
PEFT, DISTILL = "parameter-efficient finetuning", "distillation"
PREFERENCE = "preference tuning"
RL = "RL with rewards"


def parse_freeze(text: str) -> tuple[bool, int]:
    """``--freeze`` as (freeze the embeddings, number of first blocks to freeze)."""
    embeddings, layers = False, 0
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "embeddings":
            embeddings = True
        elif part.startswith("layers:") and part[7:].isdigit() and int(part[7:]) > 0:
            layers = int(part[7:])
        else:
            raise ValueError(f"unknown part {part!r} (use embeddings, layers:K, or both comma-separated)")
    return embeddings, layers


@dataclass(kw_only=True)
class FinetuneConfig(TrainingOptions):
    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data", PEFT, DISTILL, PREFERENCE, RL, BATCH, OPTIMIZATION,
                                           MASKING, STOPPING, RUN)

    # -- what to train on --------------------------------------------------------------------------
    base: str = option(help="Checkpoint to start from (its tokenizer, architecture and weights).", positional=True,
                       affects_output=False)  # its id goes into the run's identity
    data: str = option(help="Training data: a dataset artifact (labeled for classify; any for clm/mlm) or a JSONL "
                       "file: instruction/response records for sft, conversations for chat ({\"messages\": [{\"role\", "
                       "\"content\"}]} or ShareGPT's {\"conversations\": [{\"from\", \"value\"}]}), "
                       "question/context/answer records for qa "
                       "(SQuAD's layout: {\"question\", \"context\", \"answers\": {\"text\": [...], "
                       "\"answer_start\": [...]}}, or \"answer\" and \"answer_start\"), preference pairs for dpo "
                       "and orpo ({\"prompt\", \"chosen\", \"rejected\"}, the prompt a text or a conversation; "
                       "TRL's conversational chosen/rejected message lists too), prompts with reference answers "
                       "for grpo ({\"prompt\", \"answer\"}, or \"messages\" ending with the user's turn for a "
                       "chat model).", positional=True,
                       affects_output=False)
    task: str = option("auto", "classify, sft (instruction tuning), chat (multi-turn conversations), qa "
                       "(extractive question answering: start/end heads on an encoder), clm or mlm (continued "
                       "pretraining), dpo or orpo (preference tuning on chosen/rejected pairs: DPO against a frozen "
                       "reference, ORPO without one), grpo (RL: replies sampled from the model, scored by "
                       "--reward); auto: classify for a labeled dataset, qa for a JSONL file whose records have a "
                       "question and a context, dpo for one whose records hold \"chosen\" and \"rejected\", chat "
                       "for one whose records hold \"messages\" or \"conversations\", sft for another, else the "
                       "base's objective.", choices=TASKS, resume=True)
    # -- the model -----------------------------------------------------------------------------------
    scratch: bool = option(False, "Start from random weights of the base's architecture (a baseline for what "
                           "pretraining buys); the base still gives the tokenizer.", section="model", resume=True)
    model: str | None = option(None, "Train a new model of this preset instead of the base's (random weights, the "
                               f"base's tokenizer): e.g. a smaller student for --teacher. Presets: {PRESET_HELP}.",
                               section="model", resume=True)
    n_layer: int | None = option(None, "With --model: number of blocks / LSTM layers.", section="model",
                                 resume=True)
    n_head: int | None = option(None, "With --model: attention heads.", section="model", resume=True)
    d_model: int | None = option(None, "With --model: model width.", section="model", resume=True)
    d_ff: int | None = option(None, "With --model: feed-forward width.", section="model", resume=True)
    dropout: float | None = option(None, "Dropout probability (default: the base model's).", section="model",
                                   resume=True)
    block_size: int | None = option(None, "A longer context than the base's, for a rotary model: positions "
                                    "beyond the base's are reached by --rope-scaling; --seq-len defaults to it.",
                                    section="model")
    rope_scaling: str | None = option(None, "With --block-size: linear (position interpolation, the default), "
                                      "ntk (NTK-aware theta), or none (plain extrapolation).",
                                      choices=("linear", "ntk", "none"), section="model")
    rope_factor: float | None = option(None, "With --block-size: the stretch of the rotary positions (default: "
                                       "the new block size over the base's).", section="model")
    pooling: str = option("auto", "classify: the vector the head reads: the mean of the hidden states, the last "
                          "position's (causal models; what Hugging Face's GPT-2 and Llama classifiers read, so "
                          "--pooling last exports), or [CLS] (BERT); auto: mean, last for an LSTM, and for a model "
                          "imported from transformers what its classifiers read (last, or cls for BERT).",
                          choices=("auto", "last", "cls", "mean"), section="model", resume=True)
    freeze: str = option("", "Freeze parameters: embeddings, layers:K (the first K blocks), or both "
                         "comma-separated.", section="model", resume=True)
    # -- data ------------------------------------------------------------------------------------------
    val_fraction: float = option(0.1, "Share of the training data held out for validation when the data has no "
                                 "validation split (stratified by label for classify).", section="data",
                                 resume=True)
    max_train_examples: int = option(0, "classify, sft, chat, dpo, orpo: train on a seeded random subset of this many "
                                     "examples (0: all), e.g. for learning curves; validation is unchanged.",
                                     section="data",
                                     resume=True)
    class_weights: str = option("auto", "classify: weight the loss by inverse class frequency (balanced); auto: "
                                f"balanced when the largest class has {IMBALANCE_RATIO:g}x the smallest's training "
                                "examples or more.", choices=("auto", "none", "balanced"), section="data", resume=True)
    long_text: str = option("cut", "classify: how a text longer than the window (--seq-len) is read. cut: its "
                            "beginning, in training and after. mean or max: as overlapping chunks, each a training "
                            "example with the text's label (at most 8 a text, spread over it), whose class logits "
                            "validation, evaluate, generate and serve average (mean) or take each class's max of "
                            "(max). Cut is the default as measured: on manual pages and docstrings, whose first "
                            "lines say what they are, it scored higher (README). Recorded in the checkpoint.",
                            choices=("mean", "max", "cut"), section="data")
    chunk_stride: int = option(0, "classify: tokens between the starts of consecutive chunks (0: half a window). "
                               "qa: tokens between the starts of a long context's windows, the question repeated "
                               "in each (BERT's doc stride; 0: half a window's context); recorded in the "
                               "checkpoint.", section="data", resume=True)
    max_answer_tokens: int = option(30, "qa: the longest answer span, in tokens (BERT's max_answer_length); "
                                    "recorded in the checkpoint for evaluate, generate and serve.", section="data",
                                    resume=True)
    token_dropout: float = option(0.0, "classify: drop each input token with this probability during training "
                                  "(augmentation).", section="data", resume=True)
    group_by_length: bool = option(True, "classify, sft: put examples of similar length in the same batches, "
                                   "within a seeded shuffle of buckets of 50 steps (less padding, and shapes that "
                                   "repeat); --no-group-by-length: batches drawn at random.", section="data",
                                   resume=True)
    pack: bool = option(False, "sft, chat: pack the examples of a batch into as few rows as fit the window, with "
                        "attention kept inside each example and its positions restarting, so that each example's "
                        "loss is what it is alone. It saves compute when a batch's examples are many and short "
                        "against the window; on the demo's (76 tokens on average in 128) it saved none (README). "
                        "GPT only.", section="data")
    prompt_field: str = option("prompt", "sft: JSONL field of the instruction; grpo: of the prompt.", section="data",
                               resume=True)
    response_field: str = option("response", "sft: JSONL field of the response.", section="data", resume=True)
    template: str = option(DEFAULT_TEMPLATE, "sft: prompt template, {prompt} marks the instruction; stored in "
                           "the checkpoint so that generate applies it.", section="data", resume=True)
    chat_template: str = option("", "chat: a Jinja chat template file (Hugging Face's chat_template language) to "
                                "render conversations with; unset: the base's own (an imported chat model's), else "
                                "lmkit's ChatML (<|im_start|>role ... <|im_end|>, its two tokens added to the "
                                "tokenizer). Stored in the checkpoint for chat, generate, serve and export.",
                                section="data", resume=True)
    system_prompt: str = option("", "chat: the system turn of conversations that have none, in training and "
                                "after (stored in the checkpoint; lmkit chat --system overrides it); unset: the "
                                "base's, or none.", section="data", resume=True)
    last_turn_only: bool = option(False, "chat: the loss on each conversation's last assistant turn only (the "
                                  "earlier turns are context); default: on every assistant turn.", section="data",
                                  resume=True)
    skip_bad_records: bool = option(False, "chat: skip and count bad conversations (bad JSON, an unknown role, an "
                                    "empty turn, no assistant turn, longer than the window) instead of stopping at "
                                    "the first.", section="data", resume=True)
    # -- parameter-efficient finetuning ----------------------------------------------------------------
    lora_rank: int = option(0, "LoRA rank on attention and MLP projections (0: full finetuning).", section=PEFT,
                            resume=True)
    lora_alpha: float = option(16.0, "LoRA scale numerator: updates are scaled by alpha / rank.", section=PEFT,
                               resume=True)
    lora_dropout: float = option(0.05, "Dropout on the LoRA branch's input.", section=PEFT, resume=True)
    lora_merge: bool = option(True, "Merge the adapters into final/ (a plain checkpoint); --no-lora-merge keeps "
                              "them (merge later with `lmkit merge-lora`).", section=PEFT)
    # -- distillation ----------------------------------------------------------------------------------
    teacher: str | None = option(None, "Distill from this checkpoint: soft targets at --temperature mixed with "
                                 "the hard labels.", affects_output=False, section=DISTILL)  # by id
    temperature: float = option(2.0, "Distillation temperature (Hinton et al. 2015).", section=DISTILL,
                                resume=True)
    distill_alpha: float = option(0.5, "Weight of the soft-target loss; 1 - alpha weighs the hard labels.",
                                  section=DISTILL, resume=True)
    # -- preference tuning -----------------------------------------------------------------------------
    beta: float = option(0.1, "dpo: the strength of the pull towards the reference (DPO's beta: the implicit reward "
                         "is beta x the log-probability ratio of policy to reference; lower lets the model move "
                         "further). orpo: lambda, the weight of the odds-ratio term against the chosen replies' "
                         "negative log-likelihood (TRL's ORPOConfig calls it beta).", section=PREFERENCE, resume=True)
    reference: str | None = option(None, "dpo: the frozen reference checkpoint (same tokenizer as the base); unset: "
                                   "the base. Its log-probabilities of every pair are computed once, before "
                                   "training. grpo: the reference of the KL term (with --kl-coef).",
                                   affects_output=False, section=PREFERENCE, resume=True)  # by id
    # -- RL with rewards (grpo) --------------------------------------------------------------------------
    reward: str = option("exact", "grpo: how a reply is scored against its record: exact (normalized match with the "
                         "answer), number (the reply's last number equals the answer's), json (the reply parses), "
                         "regex:PATTERN (its first group, or match, equals the answer; 1 on a match when the record "
                         "has none; put it last, it takes the rest), length:N (-max(0, tokens - N) / N), terms joined "
                         "by + and added (number+length:64), or your own function as MODULE:FUNCTION or "
                         "PATH.py:FUNCTION, called as function(prompt, reply, record) -> number. That is your own "
                         "Python code, imported and run in this process (as TRL runs reward functions). A reply "
                         "passes when every term but length scores above 0.", section=RL)
    answer_field: str = option("answer", "grpo: JSONL field of the reference answer (a list: any of them).",
                               section=RL)
    group_size: int = option(4, "grpo: replies sampled per prompt; each reply's advantage is its reward against "
                             "the group's mean and spread, so at least 2.", section=RL)
    max_new_tokens: int = option(64, "grpo: the longest sampled reply, in tokens.", section=RL)
    sampling_temperature: float = option(1.0, "grpo: the temperature replies are sampled at (validation replies "
                                         "are greedy).", section=RL)
    kl_coef: float = option(0.0, "grpo: weight of the KL penalty to the reference (--reference, else the base; "
                            "k3 estimator, as DeepSeekMath); 0: none, and no reference is loaded.", section=RL)
    # -- finetuning's defaults (small data, a pretrained start); help and place are the shared options' --------
    micro_batch: int = TrainingOptions.default("micro_batch", 16, "Sequences (classify, sft: examples) per "
                                               "forward pass on each process.")
    lr: float | None = option(None, f"Peak learning rate; unset: {LR_PER_WIDTH:g} / d_model (3e-4 at width 200), x"
                              f"{LORA_LR_FACTOR:g} with --lora-rank, and pretraining's 0.5 / d_model (at most 3e-3) "
                              "from random weights (--scratch, --model).", section=OPTIMIZATION)
    warmup_steps: int = TrainingOptions.default("warmup_steps", 20)
    weight_decay: float = TrainingOptions.default("weight_decay", 0.01)
    beta2: float = TrainingOptions.default("beta2", 0.999)
    eval_every: int | None = option(None, "Validate every N steps (0: never); unset: twice an epoch.",
                                    section=STOPPING)
    patience: int = TrainingOptions.default("patience", DEFAULT_PATIENCE, "Stop after this many evaluations without "
                                            "a better --metric (0: never); with the default evaluation, two epochs.")
    eval_batches: int = TrainingOptions.default("eval_batches", 0)
    checkpoint_every: int = TrainingOptions.default("checkpoint_every", 0)
    # -- shared options that a resumed finetune keeps (continued masked LM masks as it started) ------------------
    mask_prob: float = TrainingOptions.kept_on_resume("mask_prob")
    mask_replace: float = TrainingOptions.kept_on_resume("mask_replace")
    mask_random: float = TrainingOptions.kept_on_resume("mask_random")
    # -- finetuning's own limits and outputs -----------------------------------------------------------
    epochs: float | None = option(None, f"Passes over the training data; unset: at most {DEFAULT_EPOCHS:g} (early "
                                  "stopping usually ends the run before), unless --max-steps, --max-tokens or "
                                  "--max-time bounds the run.", section=STOPPING)
    metric: str = option("auto", "Validation metric for the best checkpoint and early stopping; auto: accuracy "
                         "for classify, f1 (SQuAD's) for qa, loss otherwise (for dpo and orpo their loss on the "
                         "held-out pairs; preference_accuracy: the share of them ranked right); for grpo pass_rate, "
                         "the share of greedy replies to held-out prompts that pass --reward (or reward, their mean "
                         "reward).", choices=METRICS, section=STOPPING)
    final: str = option("best", "What final/ holds: the best checkpoint's weights by --metric, or the last.",
                        choices=("best", "last"), section=STOPPING)
    find_lr: bool = option(False, "Run a learning-rate range test instead of training: print loss against "
                           "learning rate (and plot it to --out when matplotlib is present) and suggest --lr.",
                           affects_output=False, section=STOPPING)
    find_lr_steps: int = option(100, "--find-lr: steps from 1e-7 to 1.", affects_output=False, section=STOPPING)

    def learning_rate(self, width: int) -> tuple[float, str]:
        """--lr, or the rate for ``width`` and how it was chosen."""
        if self.lr is not None:
            return self.lr, "--lr"
        if self.scratch or self.model:
            from lmkit.training.budget import learning_rate  # pretraining's rule (numpy only: no torch at parse time)

            return learning_rate(width), f"auto: 0.5 / d_model {width}, from random weights"
        if self.lora_rank:
            return LORA_LR_FACTOR * LR_PER_WIDTH / width, \
                   f"auto: {LORA_LR_FACTOR:g} x {LR_PER_WIDTH:g} / d_model {width}, LoRA"
        return LR_PER_WIDTH / width, f"auto: {LR_PER_WIDTH:g} / d_model {width}"

    def other_length_given(self) -> bool:
        return self.epochs is not None

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.max_answer_tokens < 1:
            problems.append(f"--max-answer-tokens: must be at least 1, got {self.max_answer_tokens}")
        if self.find_lr_steps < 3:
            problems.append("--find-lr-steps: must be at least 3 (a rate is suggested from the curve's shape)")
        for name in ("lora_rank", "max_train_examples", "chunk_stride"):
            if getattr(self, name) < 0:
                problems.append(f"{flag_name(name)}: must not be negative")
        if self.epochs is not None and self.epochs <= 0:
            problems.append(f"--epochs: must be positive, got {self.epochs}")
        for name in ("distill_alpha", "token_dropout", "lora_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{flag_name(name)}: must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"--val-fraction: must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.token_dropout >= 1.0:
            problems.append("--token-dropout: must be below 1 (1 drops every token)")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            problems.append(f"--dropout: must be in [0, 1), got {self.dropout}")
        if self.beta <= 0:
            problems.append(f"--beta: must be positive, got {self.beta}")
        if self.group_size < 2:
            problems.append(f"--group-size {self.group_size}: group-normalized advantages need at least 2 replies "
                            "per prompt (a mean and a spread)")
        if self.max_new_tokens < 1:
            problems.append(f"--max-new-tokens: must be at least 1, got {self.max_new_tokens}")
        if not self.sampling_temperature > 0:
            problems.append(f"--sampling-temperature: must be positive (at 0 a group's replies are all the same), "
                            f"got {self.sampling_temperature}")
        if not self.kl_coef >= 0:
            problems.append(f"--kl-coef: must not be negative, got {self.kl_coef}")
        if self.temperature <= 0:
            problems.append(f"--temperature: must be positive, got {self.temperature}")
        if self.lora_alpha <= 0:
            problems.append(f"--lora-alpha: must be positive, got {self.lora_alpha}")
        if "{prompt}" not in self.template:
            problems.append("--template: must contain {prompt}, where the instruction goes")
        try:
            parse_freeze(self.freeze)
        except ValueError as exc:
            problems.append(f"--freeze: {exc}")
        if self.block_size is None and (self.rope_scaling is not None or self.rope_factor is not None):
            problems.append("--rope-scaling and --rope-factor go with --block-size (a longer context than the base's)")
        if self.block_size is not None and self.block_size <= 0:
            problems.append(f"--block-size: must be positive, got {self.block_size}")
        overrides = [flag_name(n) for n in ("n_layer", "n_head", "d_model", "d_ff") if getattr(self, n) is not None]
        if overrides and not self.model:
            problems.append(f"{', '.join(overrides)}: shape a new model, so they need --model PRESET")
        if self.model and self.scratch:
            problems.append("--model and --scratch: --model already starts from random weights; drop --scratch")
        if self.lora_rank and self.freeze:
            problems.append("--lora-rank and --freeze: LoRA already freezes every base weight; drop --freeze")
        if self.lora_rank and (self.model or self.scratch):
            problems.append("--lora-rank: adapts pretrained weights; it does not fit --model or --scratch")
        if self.find_lr and self.resuming:
            problems.append("--find-lr and --resume: the range test trains nothing to resume")
        return problems

    def model_overrides(self) -> dict:
        return {name: getattr(self, name) for name in ("n_layer", "n_head", "d_model", "d_ff")
                if getattr(self, name) is not None}

    def step_limit_for(self, examples: int, global_batch: int) -> int:
        """Steps from --max-steps, else from --epochs (or its default when no other limit is given)."""
        if self.max_steps:
            return self.max_steps
        if self.epochs is not None or not (self.max_tokens or self.max_time):
            return math.ceil((self.epochs or DEFAULT_EPOCHS) * examples / global_batch)
        return 0
