"""Extractive question answering (SQuAD v1.1's task): cross entropy of the answer's first and last token
positions over a window's tokens, on question/context/answer records of a JSONL file (lmkit.data.qa).

Each training question becomes its context's windows (lmkit.data.qa_windows); a window without the whole answer
points at [CLS], as in transformers' run_qa. Windows are read at global sample positions
(objectives.BatchLayout) with the same seeded permutations as every objective, so a resumed run reads
exactly what the uninterrupted one would have. Validation reports the loss over the held-out questions'
windows and SQuAD's exact match and F1 of their best spans (lmkit evaluate's definitions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.data.qa import QAExample, read_qa
from lmkit.data.qa_windows import (
    EncodedQuestion,
    QASettings,
    Window,
    answer_tokens,
    context_room,
    encode_question,
    format_windows,
    make_windows,
    with_answer,
)
from lmkit.errors import UserError
from lmkit.evaluation.spans import extract, window_logits
from lmkit.evaluation.squad import squad_scores
from lmkit.tokenizer import Tokenizer
from lmkit.training.objectives.base import (
    BatchLayout,
    Built,
    Count,
    ObjectiveInputs,
    ObjectiveSpec,
    examples_at,
    held_out,
    register,
)
from lmkit.training.objectives.objective_options import HeldOutOptions
from lmkit.vocab import Specials


@dataclass(frozen=True)
class QAOptions(HeldOutOptions):
    """What extractive question answering reads besides the held-out split: the flags of the same names."""

    chunk_stride: int       # tokens between a long context's windows (0: half a window's context)
    max_answer_tokens: int  # the longest answer span


def answer_windows(examples: list[QAExample], tokenizer: Tokenizer, settings: QASettings, specials: Specials
                   ) -> tuple[list[EncodedQuestion], list[Window]]:
    """Each example encoded, and its windows with their targets (its first answer's tokens, or [CLS])."""
    encoded, windows = [], []
    for index, example in enumerate(examples):
        item = encode_question(tokenizer, example.question, example.context)
        answer = example.answers[0]
        tokens = answer_tokens(item.spans, answer.start, answer.end)
        if tokens is None:  # (an answer of white space alone is refused when read)
            raise UserError(f"{example.where}: answer {answer.text!r} covers no token of the context")
        encoded.append(item)
        windows += [with_answer(window, tokens)
                    for window in make_windows(index, item.question, item.context, settings.max_len, settings.stride,
                                               specials)]
    return encoded, windows


class QuestionAnswering:
    """Mean of the start and end cross entropies; validation reports loss, exact match and F1."""

    name = "qa"

    def __init__(self, train: list[Window], validation: list[QAExample], settings: QASettings, layout: BatchLayout,
                 seed: int, device: torch.device, specials: Specials, tokenizer: Tokenizer):
        self.train, self.validation, self.settings = train, validation, settings
        self.layout, self.seed, self.device, self.specials = layout, seed, device, specials
        self.val_encoded, self.val_windows_list = (answer_windows(validation, tokenizer, settings, specials)
                                                   if validation else ([], []))
        self.train_windows = Count(len(train))
        self.val_windows = Count(len(validation)) if validation else None
        self.tokens_per_sample = max(1, round(float(np.mean([len(w.ids) for w in train]))))

    def _batch(self, windows: list[Window]) -> dict[str, torch.Tensor]:
        idx, mask, types = format_windows(windows, self.specials.pad)
        targets = torch.tensor([[w.start, w.end] for w in windows], dtype=torch.long)
        return {"idx": idx.to(self.device), "attention_mask": mask.to(self.device),
                "token_types": types.to(self.device), "targets": targets.to(self.device)}

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        return self._batch(examples_at(self.train, self.layout, self.seed, step, micro, rank))

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], teacher: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch["idx"], batch["targets"], batch["attention_mask"], batch["token_types"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward(model, batch)[1]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        """The loss over the validation questions' windows, and SQuAD exact match and F1 of their answers."""
        if not self.validation:
            return {}
        count = len(self.validation)
        if max_batches:
            count = min(count, max_batches * self.layout.micro_batch)
        windows = [w for w in self.val_windows_list if w.example < count]
        logits = window_logits(model, windows, self.layout.micro_batch * 2, self.specials.pad, self.device)
        losses = [(F.cross_entropy(row[:, 0][None], torch.tensor([w.start])) +
                   F.cross_entropy(row[:, 1][None], torch.tensor([w.end]))) / 2
                  for w, row in zip(windows, logits)]
        examples = self.validation[:count]
        answers = extract(model, self.val_encoded[:count], [e.context for e in examples], self.settings, self.specials,
                          self.layout.micro_batch * 2, windows, logits)
        scores, _ = squad_scores([a.text for a in answers], [[g.text for g in e.answers] for e in examples])
        return {"val_loss": float(torch.stack(losses).mean()), "val_exact_match": scores["exact_match"],
                "val_f1": scores["f1"]}


def _build(inputs: ObjectiveInputs[QAOptions]) -> Built:
    options = inputs.options
    room = context_room(inputs.seq_len)
    if options.chunk_stride > room:
        raise UserError(f"--chunk-stride {options.chunk_stride}: must be at most {room}, the context tokens of a "
                        f"window of --seq-len {inputs.seq_len} (a longer stride would skip context)")
    settings = QASettings(inputs.seq_len, options.chunk_stride, options.max_answer_tokens)
    tokenizer = Tokenizer.from_artifact(inputs.tokenizer.path)
    examples = read_qa(inputs.data)
    train, validation = held_out(examples, options, inputs.seed, inputs.notes, "questions")
    _, windows = answer_windows(train, tokenizer, settings, inputs.specials)
    pointing_at_cls = sum(w.start == 0 for w in windows)
    stride = f"every {settings.stride} tokens" if settings.stride else "every half window"
    inputs.notes.append(f"{len(train)} training questions give {len(windows)} windows of at most {inputs.seq_len} "
                        f"tokens (a long context read in windows starting {stride}, --chunk-stride); "
                        f"{pointing_at_cls} hold no whole answer and point at [CLS]")
    objective = QuestionAnswering(windows, validation, settings, inputs.layout, inputs.seed, inputs.device,
                                  inputs.specials, tokenizer)
    return Built(objective, {"qa": settings.to_head()})


register(ObjectiveSpec("qa", ("bert",), _build, "extractive question answering (answer spans of a context)",
                       metric="val_f1", metrics=("val_loss", "val_exact_match", "val_f1"), unit="windows",
                       options=QAOptions))
