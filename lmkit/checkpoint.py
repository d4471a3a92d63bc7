"""Reading checkpoints: a verified checkpoint artifact, its model config and weights, its tokenizer and what
it was finetuned for (a classifier's head, a span model's settings, an SFT template, unmerged LoRA adapters).

A checkpoint is an artifact (kind ``checkpoint``)::

    model.safetensors            weights (tied tensors stored once)
    model.json                   ModelConfig, the objective it was trained with and, for finetuned
                                 models, "head" (classifier labels and pooling), "qa" (a span model's
                                 window, stride and longest answer), "template" (the SFT prompt
                                 template), "chat" (a chat model's Jinja template, its variables, default
                                 system prompt and end-of-turn token: data.chat_template.ChatFormat),
                                 "stop" (token ids that end a reply besides eos: the end of turn, an
                                 imported generation_config.json's eos_token_id list) and "lora"
                                 (adapters kept unmerged)
    tokenizer/                   a copy of the tokenizer artifact (nested, verified with the rest)
    trainer/state.json           step, tokens seen, best metric, RNG states, optimizer metadata
    trainer/optimizer.safetensors  optimizer moments and the torch RNG state

A chat model's checkpoint is of format 2 (``CHAT_FORMAT``): an older lmkit refuses it rather than serving it as
a plain text model. Everything that uses a model reads it here; writing checkpoints and resuming training from
them belong to ``lmkit.training.checkpoint``. Nothing is pickled: loading a checkpoint never executes code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model
from torch import nn

from lmkit import artifacts
from lmkit.data.chat_template import ChatFormat
from lmkit.errors import ArtifactError, UserError
from lmkit.models import CAUSAL_ARCHS, build_model
from lmkit.models.config import ModelConfig
from lmkit.tokenizer import specials_in
from lmkit.vocab import Specials

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model.json"
STATE_FILE = "trainer/state.json"
OPTIMIZER_FILE = "trainer/optimizer.safetensors"
CHAT_FORMAT = 2  # the checkpoint format of a chat model (model.json "chat")


def checkpoint_format(extra: dict[str, Any] | None) -> int | None:
    """The format version a checkpoint with model.json additions ``extra`` is written in (None: the default)."""
    return CHAT_FORMAT if extra and extra.get("chat") else None


@dataclass
class TrainerState:
    """Everything besides weights and optimizer moments that resuming needs."""

    step: int = 0
    tokens: int = 0
    elapsed_seconds: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    world_size: int = 1
    global_batch: int = 0  # sequences per optimizer step over all processes (0: a checkpoint of older lmkit)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Checkpoint:
    """A verified checkpoint artifact and what it says about its model."""

    artifact: artifacts.Artifact
    model_config: ModelConfig
    objective: str                    # what it last trained with: clm, mlm (+nsp, +sop), classify, sft, chat, dpo
    head: dict[str, Any] | None = None      # classifiers: {"labels": [names by index], "pooling", "max_len"}
    template: str | None = None             # sft: the prompt template, "{prompt}" marks the instruction
    lora: dict[str, Any] | None = None      # unmerged adapters: {"rank", "alpha", "dropout"}
    qa: dict[str, Any] | None = None        # span models (extractive QA): models.span.QASettings
    chat: ChatFormat | None = None          # chat models: the template a conversation is rendered with
    stop: tuple[int, ...] = ()              # ids that end a reply besides eos (end of turn, generation_config's)

    @property
    def task(self) -> str:
        """What the checkpoint's model does: "lm" (clm or mlm), "classify", "qa", "sft" or "chat"."""
        if self.head is not None:
            return "classify"
        if self.qa is not None:
            return "qa"
        if self.chat is not None:
            return "chat"
        return "sft" if self.template is not None else "lm"  # sft, or preference-tuned/RL from an SFT model

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Every id that ends a generated reply: eos, the end-of-turn token and the stored stop ids."""
        end = self.chat.end_of_turn if self.chat is not None else None
        return tuple(sorted({self.specials.eos, *self.stop, *([] if end is None else [end])}))

    @property
    def masked_lm(self) -> bool:
        """Whether it was trained as a masked LM (alone, or with a sentence-pair task): fill-mask reads it."""
        return self.objective in ("mlm", "mlm+nsp", "mlm+sop")

    @property
    def labels(self) -> list[str] | None:
        return None if self.head is None else list(self.head["labels"])

    @property
    def max_len(self) -> int:
        """Longest input a classifier was trained on (inputs are cut to it); else the block size."""
        if self.head is not None and self.head.get("max_len"):
            return int(self.head["max_len"])
        if self.qa is not None:
            return int(self.qa["max_len"])
        return self.model_config.block_size

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def tokenizer_path(self) -> Path:
        return self.artifact.path / "tokenizer"

    @cached_property  # specials.json, read once
    def specials(self) -> Specials:
        """The special token ids of the model's tokenizer (lmkit's fixed ids, or an imported tokenizer's)."""
        return specials_in(self.tokenizer_path)

    def build_model(self) -> nn.Module:
        """The model with its saved weights: a language model, a SequenceClassifier for a classifier
        checkpoint or a SpanExtractor for a span (qa) one; with LoRALinear wrappers when the adapters were
        kept unmerged."""
        if self.head is not None:
            from lmkit.models.classifier import SequenceClassifier

            model = SequenceClassifier(self.model_config, len(self.head["labels"]), self.head["pooling"])
        elif self.qa is not None:
            from lmkit.models.span import SpanExtractor

            model = SpanExtractor(self.model_config)
        else:
            model = build_model(self.model_config)
        if self.lora is not None:
            from lmkit.models.lora import apply_lora

            apply_lora(model, int(self.lora["rank"]), float(self.lora["alpha"]), float(self.lora.get("dropout", 0.0)))
            for parameter in model.parameters():
                parameter.requires_grad_(True)  # frozen or not is the training stage's decision
        path = self.artifact.file(MODEL_FILE)
        try:
            missing, unexpected = load_model(model, str(path), strict=False)
        except SafetensorError as exc:
            raise not_safetensors(path, exc) from None
        except RuntimeError as exc:  # load_state_dict: "size mismatch for NAME: ..."
            if not str(exc).startswith("Error(s) in loading state_dict"):
                raise
            raise ArtifactError(f"{path}: weights do not match model.json ({str(exc).splitlines()[1].strip()})") \
                from None
        if missing or unexpected:
            raise ArtifactError(f"{self.artifact.file(MODEL_FILE)}: weights do not match model.json "
                                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        return model

    def inference_model(self) -> nn.Module:
        """The model for use rather than training: LoRA adapters merged (one matmul per projection, the
        same outputs), eval mode, no gradients. What generate, evaluate, export, inspect and a teacher use."""
        model = self.build_model()
        if self.lora is not None:
            from lmkit.models.lora import merge_lora

            merge_lora(model)
        return model.eval().requires_grad_(False)

    def trainer_state(self) -> TrainerState:
        payload = json.loads(self.artifact.file(STATE_FILE).read_text())
        return TrainerState(**payload["state"])


def read_reference(path: str, model: Checkpoint, compares: str, context: int = 0, context_flag: str = "") -> Checkpoint:
    """``--reference PATH`` (DPO's frozen reference, GRPO's KL term, evaluate's implicit reward): refused in one line
    unless it is a causal language model over ``model``'s tokens (its tokenizer and vocabulary) with at least
    ``context`` positions (``context_flag``: what asks for them, in the refusal). ``compares``: what the two models
    are compared on, for the tokenizer's refusal."""
    reference = read_checkpoint(path)
    flag, config = f"--reference {path}", reference.model_config
    if config.arch not in CAUSAL_ARCHS or reference.masked_lm or reference.task in ("classify", "qa"):
        raise UserError(f"{flag}: a {config.arch} {reference.task} checkpoint ({reference.objective}); the reference "
                        "is a causal language model (the model tuning started from, or another finetune of it)")
    if (artifacts.load(reference.tokenizer_path, kind="tokenizer").id
            != artifacts.load(model.tokenizer_path, kind="tokenizer").id):
        raise UserError(f"{flag}: its tokenizer differs from {model.path}'s; {compares}")
    if config.vocab_size != model.model_config.vocab_size:
        raise UserError(f"{flag}: its vocabulary has {config.vocab_size} entries, {model.path}'s "
                        f"{model.model_config.vocab_size}; the reference must score the same tokens")
    if config.block_size < context:
        raise UserError(f"{flag}: its block size {config.block_size} is below {context_flag} {context}")
    return reference


def not_safetensors(path: Path, exc: SafetensorError) -> ArtifactError:
    # The manifest vouches for the bytes, not for what they claim: a file sealed with a hand-made manifest
    # may be a pickle, or a header that lies; safetensors refuses it before allocating or executing anything.
    return ArtifactError(f"{path}: not a valid safetensors file ({exc})")


def read_checkpoint(path: str | Path) -> Checkpoint:
    artifact = artifacts.load(path, kind="checkpoint")
    try:
        saved = json.loads(artifact.file(MODEL_CONFIG_FILE).read_text())
        model_config = ModelConfig.from_dict(saved["model"])
        objective = saved["objective"]
        head, template, lora, qa = saved.get("head"), saved.get("template"), saved.get("lora"), saved.get("qa")
        chat = ChatFormat.from_dict(saved["chat"]) if saved.get("chat") is not None else None
        stop = saved.get("stop") or []
        if not isinstance(stop, list) or not all(isinstance(i, int) and 0 <= i < model_config.vocab_size
                                                 for i in stop):
            raise ValueError(f"'stop' must be a list of token ids below the vocabulary size {model_config.vocab_size}")
        if chat is not None and chat.end_of_turn is not None and chat.end_of_turn >= model_config.vocab_size:
            raise ValueError(f"'chat' 'end_of_turn' {chat.end_of_turn} is not below the vocabulary size")
        if chat is not None and model_config.arch == "bert":
            raise ValueError("'chat' needs a causal model")
        if head is not None and (not isinstance(head.get("labels"), list) or len(head["labels"]) < 2
                                 or not isinstance(head.get("pooling"), str)):
            raise ValueError("'head' needs a list of at least 2 labels and a pooling")
        if template is not None and (not isinstance(template, str) or "{prompt}" not in template):
            raise ValueError("'template' must be a string containing {prompt}")
        if lora is not None and not (isinstance(lora, dict) and int(lora["rank"]) > 0):
            raise ValueError("'lora' needs a positive rank")
        if qa is not None:
            from lmkit.data.qa_windows import QASettings

            QASettings.from_head(qa)
            if model_config.arch != "bert":
                raise ValueError("'qa' needs a bert model")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{artifact.file(MODEL_CONFIG_FILE)}: invalid model config ({exc})") from None
    return Checkpoint(artifact=artifact, model_config=model_config, objective=objective, head=head,
                      template=template, lora=lora, qa=qa, chat=chat, stop=tuple(stop))
