"""``lmkit evaluate --task qa``: a span (qa) checkpoint's answers to question/context records, scored by SQuAD
v1.1's exact match and F1 (evaluation/squad.py); and the trivial baseline that answers every question with
its context's first sentence."""

from __future__ import annotations

from typing import Any, Callable

from lmkit.data.qa import QAExample, first_sentence
from lmkit.data.qa_windows import QASettings, encode_question, question_windows
from lmkit.evaluation.scoring import Inference
from lmkit.evaluation.spans import extract, window_logits
from lmkit.evaluation.squad import squad_scores
from lmkit.evaluation.tasks import TaskOutcome
from lmkit.progress import reporter


def answer_examples(inference: Inference, tokenizer, examples: list[QAExample], settings: QASettings,
                    advance: Callable[[float], None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Each example's prediction record (the answer, its characters, score, and scores against the golds) and
    how many windows were read; questions go through the model a batch of windows at a time."""
    records, windows_read = [], 0
    step = max(1, inference.batch_size)
    for begin in range(0, len(examples), step):  # a few questions at a time: progress, and bounded memory
        chunk = examples[begin:begin + step]
        encoded = [encode_question(tokenizer, e.question, e.context) for e in chunk]
        windows = question_windows(encoded, settings, inference.specials)
        with inference.forward_pass(sum(len(w.ids) for w in windows)):
            logits = window_logits(inference.model, windows, inference.batch_size, inference.specials.pad,
                                   inference.device)
        answers = extract(inference.model, encoded, [e.context for e in chunk], settings, inference.specials,
                          inference.batch_size, windows, logits)
        windows_read += len(windows)
        for example, answer in zip(chunk, answers):
            records.append({"id": example.id, "question": example.question, "gold": [a.text for a in example.answers],
                            "predicted": answer.text, "start": answer.start, "end": answer.end,
                            "score": answer.to_dict()["score"]})
        if advance is not None:
            advance(len(chunk))
    _, each = squad_scores([r["predicted"] for r in records], [r["gold"] for r in records])
    for record, scores in zip(records, each):
        record.update(scores)
    return records, windows_read


def first_sentence_baseline(examples: list[QAExample], predictions: list[dict[str, Any]]
                            ) -> tuple[dict[str, float], dict[str, Any]]:
    """The context's first sentence as every answer (data.qa.first_sentence): what SQuAD's metrics give a reader
    that does not read the question. The prediction records gain ``baseline_predicted``."""
    answers = [first_sentence(e.context) for e in examples]
    metrics, _ = squad_scores(answers, [[a.text for a in e.answers] for e in examples])
    for record, answer in zip(predictions, answers):
        record["baseline_predicted"] = answer
    return metrics, {"model": "the context's first sentence (up to . ! or ? before white space, or a blank line)"}


def question_answering(inference: Inference, tokenizer, examples: list[QAExample], settings: QASettings
                       ) -> TaskOutcome:
    with reporter.task("answering", total=len(examples), unit="questions") as task:
        predictions, windows = answer_examples(inference, tokenizer, examples, settings, task.advance)
    metrics = {name: sum(p[name] for p in predictions) / len(predictions) for name in ("exact_match", "f1")}
    method = {"method": "the best span over the context's windows (start + end logit)", "framing":
              "[CLS] question [SEP] context window [SEP]", "max_len": settings.max_len,
              "stride": settings.stride or "half a window's context", "max_answer_tokens": settings.max_answer_tokens,
              "metrics": "SQuAD v1.1 exact match and F1 (normalized answers, best over the gold answers), in [0, 1]"}
    counts = {"questions": len(examples), "windows": windows}
    return TaskOutcome(len(examples), metrics, method, counts, predictions)
