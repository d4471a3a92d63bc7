"""A classifier (a body with a linear head on a pooled vector), of single texts or of pairs of texts: accuracy,
F1 and the confusion matrix on labeled documents, with a TF-IDF baseline; labels and probabilities in
``generate``; ``/v1/classify`` in ``serve``. Texts longer than the window are read as the classifier was
finetuned to read them (overlapping chunks, or their beginning), pairs cut longest first."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table

from lmkit.checkpoint import Checkpoint
from lmkit.data.framing import long_text_settings
from lmkit.errors import UserError
from lmkit.evaluation import baselines, inputs
from lmkit.evaluation import tasks as outcomes
from lmkit.evaluation.scoring import Inference
from lmkit.generation.classify import classify, reads_pairs
from lmkit.progress import reporter
from lmkit.tasks import inputs as generate_inputs
from lmkit.tasks.base import (
    DOCUMENTS,
    Baseline,
    EvalPlan,
    Evaluation,
    Generation,
    Inputs,
    Loaded,
    Route,
    TaskSpec,
    load_model,
    read_documents,
)
from lmkit.tokenizer import Tokenizer

PAIR_FIELD = "text_pair"  # a pair classifier's second text (JSONL; --text-pair; serve's classify field)


# -- evaluate ------------------------------------------------------------------------------------------------

def _check(plan: EvalPlan) -> None:
    """Labels to score against, and texts of the kind the classifier reads (pairs or single), before compute."""
    config, dataset, checkpoint = plan.config, plan.dataset, plan.checkpoint
    if dataset is not None and "labels" not in dataset.stats:
        raise UserError(f"{dataset.path}: has no labels; classification metrics need gold labels "
                        "(preprocess with --label-field)")
    if config.text_pair_field is not None and dataset is not None:
        raise UserError(f"--text-pair-field: reads the second texts of raw files for --task classify; {dataset.path} "
                        "is a dataset artifact")
    reads = reads_pairs(checkpoint.head)
    has_pairs = "pairs" in dataset.stats if dataset is not None else config.text_pair_field is not None
    if reads and not has_pairs:
        how = "preprocess it with --text-pair-field" if dataset is not None else "give --text-pair-field FIELD"
        raise UserError(f"{plan.where}: holds single texts, but {config.checkpoint} classifies pairs of texts "
                        f"(finetuned on a pair dataset); {how}")
    if has_pairs and not reads and dataset is None:
        raise UserError(f"--text-pair-field {config.text_pair_field}: {config.checkpoint} classifies single texts, "
                        "not pairs")
    if has_pairs and not reads:
        raise UserError(f"{plan.where}: holds pairs of texts, but {config.checkpoint} classifies single texts; "
                        "finetune a classifier on this pair dataset")
    long_text_settings(checkpoint.head, checkpoint.model_config.arch, checkpoint.max_len, config.long_text,
                       config.chunk_stride)


def _labeled(plan: EvalPlan, tokenizer: Tokenizer) -> inputs.Documents:
    documents = read_documents(plan, tokenizer, labeled=True)
    flag = "preprocess with --label-field" if plan.dataset is not None else f"--label-field {plan.config.label_field}"
    inputs.require_labels(documents, f"{plan.dataset.path} ({plan.split})" if plan.dataset is not None else plan.where,
                          flag)
    return documents


def _classify(plan: EvalPlan, inference: Inference, tokenizer: Tokenizer, documents: inputs.Documents):
    checkpoint, config = plan.checkpoint, plan.config
    long_text, stride = long_text_settings(checkpoint.head, checkpoint.model_config.arch, checkpoint.max_len,
                                           config.long_text, config.chunk_stride)
    return outcomes.classify(inference, documents, documents.labels, checkpoint.labels, checkpoint.model_config.arch,
                             checkpoint.max_len, plan.where, long_text, stride)


def _tfidf(plan: EvalPlan, tokenizer: Tokenizer, documents: inputs.Documents, predictions: list[dict[str, Any]]):
    """TF-IDF and logistic regression trained on the train split, C chosen on the validation split (or, as
    finetuning does without one, a stratified tenth of train); the predictions gain ``baseline_predicted``."""
    from lmkit.data.split import stratified_split
    from lmkit.evaluation.metrics import classification_metrics

    def texts(docs: inputs.Documents) -> list[str]:  # a pair's texts on two lines
        found = [tokenizer.decode(np.asarray(t).tolist()) for t in docs.tokens]
        if docs.pairs is not None:
            found = [f"{text}\n{tokenizer.decode(np.asarray(t).tolist())}"
                     for text, t in zip(found, docs.pairs, strict=True)]
        return found

    train = inputs.from_dataset(plan.dataset, "train")
    train_texts, train_labels = texts(train), np.asarray(train.labels)
    if plan.dataset.stats["splits"].get("validation", {}).get("documents"):
        validation = inputs.from_dataset(plan.dataset, "validation")
        val_texts, val_labels = texts(validation), np.asarray(validation.labels)
    else:
        names = sorted(set(train_labels))
        keep, held = stratified_split(np.array([names.index(n) for n in train_labels]), 0.1, plan.config.seed)
        val_texts, val_labels = [train_texts[i] for i in held], train_labels[held]
        train_texts, train_labels = [train_texts[i] for i in keep], train_labels[keep]
    fitted = baselines.tfidf_classifier(train_texts, train_labels, val_texts, val_labels, texts(documents))
    labels = list(plan.checkpoint.labels)
    labels += sorted(set(fitted.predictions) - set(labels))
    index = {name: k for k, name in enumerate(labels)}
    result = classification_metrics(np.array([index[n] for n in documents.labels]),
                                    np.array([index[n] for n in fitted.predictions]), labels)
    for record, predicted in zip(predictions, fitted.predictions, strict=True):
        record["baseline_predicted"] = str(predicted)
    return result["metrics"], fitted.method


CLASSIFY = Evaluation("classify", ("accuracy", "macro_f1", "weighted_f1", "mcc", "macro_precision", "macro_recall"),
                      DOCUMENTS, _classify, needs="a classifier", make="`lmkit finetune`", load=_labeled, check=_check,
                      baseline=Baseline(_tfidf, check=baselines.require_sklearn, preprocess=" with --label-field"),
                      flags=("label_field", "text_pair_field", "long_text", "chunk_stride", "seed"))


# -- generate and serve ----------------------------------------------------------------------------------------

def _read(config, checkpoint: Checkpoint) -> Inputs:
    """A pair classifier's pairs (PROMPT with --text-pair, or --input records with a "text_pair"); a classifier
    of single texts refuses them."""
    if not reads_pairs(checkpoint.head):
        if config.text_pair is not None:
            raise UserError(f"--text-pair: {config.checkpoint} classifies single texts (it was not finetuned on pairs)")
        found = generate_inputs.read_inputs(config, FOR_GENERATE, "classify")
        for name, record in zip(found.names, found.records, strict=True):
            if found.jsonl and PAIR_FIELD in record:
                raise UserError(f"{name}: has a \"{PAIR_FIELD}\" field, but the classifier reads single texts (it was "
                                "not finetuned on pairs)")
        return found
    if config.input is None and (config.prompt is None or config.text_pair is None):
        given = "PROMPT alone" if config.prompt is not None else ("--prompt-file" if config.prompt_file else "stdin")
        raise UserError(f"{given}: {config.checkpoint} classifies pairs of texts; give PROMPT with --text-pair, or "
                        f"--input JSONL records with \"text\" and \"{PAIR_FIELD}\"")
    if config.input is None:
        found = Inputs([config.prompt], [{"text": config.prompt, PAIR_FIELD: config.text_pair}], ["PROMPT"],
                       pairs=[config.text_pair])
    else:
        found = generate_inputs.from_jsonl(config.input, FOR_GENERATE)
        found.pairs = []
        for name, record in zip(found.names, found.records, strict=True):
            if not isinstance(record.get(PAIR_FIELD), str):
                raise UserError(f"{name}: needs a \"{PAIR_FIELD}\" field holding a string (the classifier reads pairs "
                                "of texts)")
            found.pairs.append(record[PAIR_FIELD])
        if not found.texts:
            raise UserError(f"{config.input}: no prompts in it")
    for name, text, pair in zip(found.names, found.texts, found.pairs, strict=True):
        if not text.strip():
            raise UserError(f"{name}: the prompt is empty (give text for the model to read)")
        if not pair.strip():
            raise UserError(f"{name}: the {PAIR_FIELD} is empty (give the pair's second text)")
    return found


def _interactive(checkpoint: Checkpoint) -> str | None:
    if reads_pairs(checkpoint.head):
        return (f"classifies pairs of texts; give PROMPT with --text-pair, or --input JSONL records with \"text\" and "
                f"\"{PAIR_FIELD}\"")
    return None


def answer(loaded: Loaded, given: Inputs, config, stream=None) -> list[dict[str, Any]]:
    checkpoint, records = loaded.checkpoint, [dict(record) for record in given.records]
    predictions = classify(loaded.model, loaded.tokenizer, checkpoint.labels, given.texts, config.batch_size,
                           given.names, checkpoint.head, given.pairs)
    for record, prediction in zip(records, predictions, strict=True):
        record.update(prediction.to_dict())
    return records


def render(records: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """One table: each text (and its pair), its label and every label's probability."""
    pairs = PAIR_FIELD in records[0]
    table = Table(title_justify="left")
    table.add_column("text", overflow="fold", ratio=3)
    if pairs:
        table.add_column(PAIR_FIELD, overflow="fold", ratio=3)
    table.add_column("label")
    for label in records[0]["probabilities"]:
        table.add_column(f"p({label})", justify="right")
    for record in records:
        text = record.get("text", record.get("prompt", ""))
        table.add_row(text, *([record[PAIR_FIELD]] if pairs else []), record["label"],
                      *(f"{p:.4f}" for p in record["probabilities"].values()))
    reporter.out.print(table)


def routes(server) -> list[Route]:
    from lmkit.serving.engine import BATCH, Batched
    from lmkit.serving.errors import ApiError
    from lmkit.serving.protocol import Body

    class ClassifyRequest(Body):
        input: str | list[str]
        text_pair: str | list[str] | None = None  # a pair classifier's second texts, one per input

    loaded = server.model

    def pairs_of(body: ClassifyRequest, texts: list[str]) -> list[str] | None:
        """A pair classifier's second texts, one per input; None for a classifier of single texts."""
        if not reads_pairs(loaded.checkpoint.head):
            if body.text_pair is not None:
                raise ApiError(400, "text_pair: this server's classifier reads single texts; send input alone",
                               "text_pair")
            return None
        if body.text_pair is None:
            raise ApiError(400, "text_pair: required: this server's classifier reads pairs of texts (input and "
                           "text_pair)", "text_pair")
        pairs = [body.text_pair] if isinstance(body.text_pair, str) else body.text_pair
        if isinstance(body.text_pair, str) != isinstance(body.input, str) or len(pairs) != len(texts):
            raise ApiError(400, f"text_pair: give one second text per input ({len(texts)}), a string for a string "
                           "input", "text_pair")
        if any(not text.strip() for text in pairs):
            raise ApiError(400, "text_pair: every text must be non-empty", "text_pair")
        return pairs

    def classify_items(items: list[tuple[str, str | None]]) -> list:
        """The predictions of (text, its pair or None) items, of one request or several."""
        checkpoint, texts = loaded.checkpoint, [text for text, _ in items]
        pairs = [pair for _, pair in items] if reads_pairs(checkpoint.head) else None
        return classify(loaded.model, loaded.tokenizer, checkpoint.labels, texts, batch_size=server.engine.max_batch,
                        head=checkpoint.head, pairs=pairs)

    async def classify_texts(body: ClassifyRequest, call) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not text.strip() for text in texts):
            raise ApiError(400, "input: every text must be non-empty", "input")
        pairs = pairs_of(body, texts)
        items = list(zip(texts, pairs or [None] * len(texts), strict=True))
        predictions = await server.submit(BATCH, Batched("classify", items, classify_items))  # with others' texts
        tokens = sum(len(ids) for ids in loaded.tokenizer.encode_batch(texts + (pairs or [])))
        call.used(tokens)
        return {"object": "list", "model": server.options.model_name, "labels": loaded.checkpoint.labels,
                "data": [{"index": i, **p.to_dict()} for i, p in enumerate(predictions)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return [Route("/v1/classify", ClassifyRequest, classify_texts)]


FOR_GENERATE = Generation("text", answer, render, other_field="prompt", read=_read, interactive=_interactive)


def _is_classifier(checkpoint: Checkpoint) -> bool:
    return checkpoint.head is not None


SPEC = TaskSpec("classify", "classifier", _is_classifier, (CLASSIFY,), load_model, FOR_GENERATE,
               endpoints=("/v1/classify",), routes=routes, lm_head=False)
