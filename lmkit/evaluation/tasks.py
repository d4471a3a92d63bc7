"""Each ``--task`` of ``lmkit evaluate`` from loaded inputs to metrics, the method that produced them,
counts and prediction records, with a progress bar. The stage picks the task and checks the inputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from lmkit.data.framing import default_stride, text_room
from lmkit.data.packing import MaskingSettings
from lmkit.errors import UserError
from lmkit.evaluation import choice, classification, generation_tasks, language_modeling
from lmkit.evaluation.inputs import Documents
from lmkit.evaluation.scoring import Inference
from lmkit.progress import reporter
from lmkit.tokenizer import Tokenizer


@dataclass
class TaskOutcome:
    examples: int
    metrics: dict[str, float]
    method: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)   # report sections: per_class, confusion
    generated_tokens: int = 0
    generation_seconds: float = 0.0  # generation runs its own model, outside Inference's count


def count_windows(n_tokens: int, window: int, stride: int) -> int:
    """How many sliding windows ``rolling_spans`` makes for a document of ``n_tokens``."""
    return 0 if n_tokens == 0 else 1 + -(-max(0, n_tokens - window) // stride)


def causal_lm(inference: Inference, documents: Documents, window: int, stride: int) -> TaskOutcome:
    total = sum(count_windows(len(tokens), window, stride) for tokens in documents.tokens)
    with reporter.task("scoring", total=total, unit="windows") as task:
        metrics, scores = language_modeling.evaluate_causal(inference, documents.tokens, documents.n_bytes, window,
                                                            stride, task.advance)
    predictions = [{"id": document_id, "tokens": s.tokens, "bytes": s.n_bytes,
                    "loss": round(s.nats / s.tokens, 6) if s.tokens else None,
                    "bpb": round(language_modeling.bits_per_byte(s.nats, s.n_bytes), 6) if s.n_bytes else None}
                   for document_id, s in zip(documents.ids, scores)]
    method = {"method": "sliding_window", "window": window, "stride": stride, "context_prefix": "</s>",
              "documents": "scored separately, end-of-document token not scored",
              "bpb_bytes": "UTF-8 bytes of the text"}
    counts = {"documents": len(documents), "tokens": sum(s.tokens for s in scores),
              "bytes": sum(s.n_bytes for s in scores), "windows": total}
    extra = {}
    if documents.langs is not None:  # a dataset preprocessed with --language-id: the figures per language
        for record, lang in zip(predictions, documents.langs):
            record["lang"] = lang
        extra["languages"] = per_language(scores, documents.langs)
    return TaskOutcome(len(documents), metrics, method, counts, predictions, extra)


def per_language(scores: list[language_modeling.DocumentScore], langs: list[str]) -> dict[str, dict[str, Any]]:
    """Loss, perplexity and bits per byte of each language's documents, the most documents first."""
    grouped: dict[str, list[language_modeling.DocumentScore]] = {}
    for score, lang in zip(scores, langs):
        grouped.setdefault(lang, []).append(score)
    out = {}
    for lang, group in sorted(grouped.items(), key=lambda item: -len(item[1])):
        nats, tokens, n_bytes = (sum(s.nats for s in group), sum(s.tokens for s in group),
                                 sum(s.n_bytes for s in group))
        if tokens and n_bytes:
            out[lang] = {**language_modeling.lm_metrics(nats, tokens, n_bytes), "documents": len(group),
                         "tokens": tokens, "bytes": n_bytes}
    return out


def masked_lm(inference: Inference, documents: Documents, window: int, vocab_size: int, masking: MaskingSettings,
              seed: int) -> TaskOutcome:
    with reporter.task("scoring", unit="windows") as task:
        metrics, masked = language_modeling.evaluate_masked(inference, documents.tokens, window, vocab_size, masking,
                                                            seed, task.advance)
    method = {"method": "masked_lm", "window": window, "mask_prob": masking.probability,
              "mask_replace": masking.replace_mask, "mask_random": masking.replace_random, "seed": seed,
              "framing": "[CLS] chunk [SEP] over documents joined by [SEP]"}
    counts = {"documents": len(documents), "tokens": sum(len(t) for t in documents.tokens), "masked_tokens": masked}
    return TaskOutcome(len(documents), metrics, method, counts)


def classify(inference: Inference, documents: Documents, gold_names: list[str], labels: list[str], arch: str,
             max_len: int, where: str, long_text: str = "cut", stride: int | None = None) -> TaskOutcome:
    index = {label: k for k, label in enumerate(labels)}
    unknown = sorted({name for name in gold_names if name not in index})
    if unknown:
        raise UserError(f"{where}: gold label(s) {', '.join(map(repr, unknown))} are not among the checkpoint's "
                        f"labels ({', '.join(labels)})")
    with reporter.task("classifying", total=len(documents), unit="docs") as task:
        probabilities = classification.predict_probabilities(inference, documents.tokens, arch, max_len,
                                                              inference.specials, task.advance, long_text, stride,
                                                              documents.pairs)
    result, predictions = classification.evaluate_classification(
        probabilities, [index[name] for name in gold_names], labels, documents.ids)
    framing = "[CLS] text [SEP]" if arch == "bert" else "text"
    if documents.pairs is not None:  # cut longest first (framing.truncate_pair)
        framing = "[CLS] text [SEP] pair [SEP]" if arch == "bert" else "text [SEP] pair"
    method = {"method": "argmax of the class probabilities", "framing": framing, "max_len": max_len,
              "long_text": long_text}
    if long_text != "cut":
        room = text_room(arch, max_len)
        method["chunk_stride"] = stride or default_stride(room)
        method["chunked_documents"] = sum(len(t) > room for t in documents.tokens)
    extra = {"per_class": result["per_class"], "confusion": {"labels": labels, "matrix": result["confusion"]}}
    return TaskOutcome(len(documents), result["metrics"], method, {"documents": len(documents)}, predictions, extra)


def multiple_choice(inference: Inference, tokenizer: Tokenizer, items: list[choice.ChoiceItem],
                    max_len: int) -> TaskOutcome:
    total = sum(len(item.choices) for item in items)
    with reporter.task("scoring choices", total=total, unit="choices") as task:
        metrics, predictions = choice.evaluate_choices(inference, tokenizer, items, max_len, task.advance)
    method = {"method": "loglikelihood of each choice", "context_prefix": "</s>",
              "acc_norm": "loglikelihood per character of the choice", "max_len": max_len}
    return TaskOutcome(len(items), metrics, method, {"items": len(items), "choices": total}, predictions)


def generate(generate_batch: Callable[[list[str]], list[str]], tokenizer: Tokenizer,
             items: list[generation_tasks.GenerationItem], metrics: list[str], batch_size: int,
             settings: dict[str, Any]) -> TaskOutcome:
    started = time.perf_counter()
    with reporter.task("generating", total=len(items), unit="answers") as task:
        scores, predictions = generation_tasks.evaluate_generation(generate_batch, items, metrics, batch_size,
                                                                   task.advance)
    seconds = time.perf_counter() - started
    generated = sum(len(tokenizer.encode(p["predicted"])) for p in predictions)
    method = {"method": "greedy decoding", **settings}
    counts = {"items": len(items), "generated_tokens": generated}
    return TaskOutcome(len(items), scores, method, counts, predictions, generated_tokens=generated,
                       generation_seconds=seconds)

