"""``lmkit evaluate``: a checkpoint measured on a dataset split or raw files, into a report artifact.

Every input is checked before any compute: the checkpoint and the task it can do, the data (its
tokenizer must be the checkpoint's, the split must not be empty, classification needs labels),
the metrics asked for, the harness tasks, the ``--fail-if`` conditions and the output directory.
The report is written (when ``--out`` is given) before the gate is applied, so a failing CI run
still leaves its report behind.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from lmkit import artifacts, config as config_lib
from lmkit.data import sources
from lmkit.data.packing import MaskingSettings
from lmkit.data.qa import read_qa
from lmkit.devices import resolve_device
from lmkit.errors import UserError
from lmkit.evaluation import (baselines, choice, gate, generation_tasks, inputs, question_answering,
                              report as report_files, tasks)
from lmkit.evaluation.scoring import Inference
from lmkit.models import CAUSAL_ARCHS
from lmkit.data.framing import long_text_settings
from lmkit.data.qa_windows import QASettings
from lmkit.progress import reporter
from lmkit.stages.evaluate_config import TASK_METRICS, EvaluateConfig
from lmkit.devices import resolve_precision
from lmkit.tokenizer import Tokenizer
from lmkit.checkpoint import Checkpoint, read_checkpoint

DEFAULT_TASK = {"lm": "lm", "classify": "classify", "sft": "generate", "qa": "qa"}  # by Checkpoint.task
METRICS_EXTRA = "lmkit[metrics]"


@dataclass
class EvaluationResult:
    """What a run produced: the report (as in report.json), where it was saved, and the gate's verdict."""

    report: dict[str, Any]
    artifact: artifacts.Artifact | None          # None without --out
    up_to_date: bool = False
    failures: list[str] = field(default_factory=list)   # --fail-if conditions that held
    comparison: dict[str, Any] | None = None             # --compare: "with" (the other report), rows, warnings


@dataclass
class _Plan:
    checkpoint: Checkpoint
    task: str | None               # None: only harness tasks
    objective: str                 # "clm" or "mlm" for --task lm; the checkpoint's otherwise
    metrics: list[str]
    dataset: artifacts.Artifact | None
    split: str | None
    files: list[str]
    window: int
    stride: int
    conditions: list[gate.Condition]
    harness_manager: Any
    input_files: list[dict[str, Any]]
    recipe: str
    other_report: dict[str, Any] | None
    compare_with: str | None
    notes: list[str]


# -- checks before compute -----------------------------------------------------------------------------
def _task(config: EvaluateConfig, checkpoint: Checkpoint) -> str | None:
    if not config.data:
        if config.task != "auto":
            raise UserError(f"--task {config.task}: needs DATA (a dataset artifact or files)")
        return None
    task = DEFAULT_TASK[checkpoint.task] if config.task == "auto" else config.task
    arch, where = checkpoint.model_config.arch, config.checkpoint
    for kind, what, how in (("classify", "a classifier", "`lmkit finetune`"),
                            ("qa", "a question-answering (span) model", "`lmkit finetune BASE QA.jsonl --task qa`")):
        if task == kind and checkpoint.task != kind:
            raise UserError(f"--task {kind}: {where} is not {what} (it is a {checkpoint.objective} {arch} model); "
                            f"finetune one with {how}")
        if task != kind and checkpoint.task == kind:
            raise UserError(f"--task {task}: {where} is {what} without a language-model head; use --task {kind}")
    if task in ("choice", "generate") and arch not in CAUSAL_ARCHS:
        raise UserError(f"--task {task}: needs a causal language model; {where} is a {arch} (masked LM) model")
    return task


def _metrics(config: EvaluateConfig, task: str | None, objective: str, notes: list[str]) -> list[str]:
    if task is None:
        if config.metrics:
            raise UserError("--metrics: chooses among a task's metrics; harness tasks report their own")
        return []
    key = "mlm" if task == "lm" and objective == "mlm" else task
    available = TASK_METRICS[key]
    wrong = [m for m in config.metrics if m not in available]
    if wrong:
        kind = "masked-LM evaluation (a BERT checkpoint)" if key == "mlm" else f"--task {task}"
        raise UserError(f"--metrics: {', '.join(wrong)} not computed by {kind}; its metrics: {', '.join(available)}")
    chosen = list(config.metrics or available)
    for metric in list(chosen):
        module = generation_tasks.missing_extra(metric)
        if module is None:
            continue
        if config.metrics:
            raise UserError(f"--metrics {metric}: needs the {module} package; install {METRICS_EXTRA}")
        chosen.remove(metric)
        notes.append(f"{metric} not computed: install {METRICS_EXTRA} for it")
    return chosen


def _data(config: EvaluateConfig, task: str | None, checkpoint: Checkpoint
          ) -> tuple[artifacts.Artifact | None, str | None, list[str]]:
    """(dataset, split, raw files): exactly one of a dataset artifact or raw files."""
    if not config.data:
        return None, None, []
    datasets = [path for path in config.data if inputs.is_dataset(path)]
    if datasets:
        if len(config.data) > 1:
            raise UserError(f"DATA: {datasets[0]} is a dataset artifact; evaluate one dataset at a time, "
                            "without other files")
        if task in ("choice", "generate", "qa"):
            raise UserError(f"--task {task}: reads JSONL files, not a dataset artifact ({datasets[0]})")
        dataset = artifacts.load(datasets[0], kind="dataset")
        inputs.require_same_tokenizer(dataset, checkpoint, config.checkpoint, ", or pass the raw files instead")
        split = inputs.choose_split(dataset, config.split)
        if task == "classify" and "labels" not in dataset.stats:
            raise UserError(f"{dataset.path}: has no labels; classification metrics need gold labels "
                            "(preprocess with --label-field)")
        return dataset, split, []
    if config.split != "auto":
        raise UserError(f"--split {config.split}: applies to a dataset artifact; DATA here is raw files")
    if task in ("choice", "generate", "qa"):
        for path in config.data:
            if not Path(path).is_file():
                raise UserError(f"{path}: no such file (--task {task} reads JSONL files)")
            if not path.endswith((".jsonl", ".ndjson")):
                raise UserError(f"{path}: --task {task} reads JSON Lines files (.jsonl)")
        return None, None, list(config.data)
    return None, None, sources.resolve_inputs(config.data)


def _check_baseline(config: EvaluateConfig, task: str | None, objective: str, dataset: artifacts.Artifact | None,
                    split: str | None, notes: list[str]) -> None:
    """--baseline needs a task with a baseline and a dataset whose train split it can learn from (qa's
    first-sentence baseline learns nothing: any records)."""
    if task == "qa":
        return
    if task not in ("classify", "lm"):
        raise UserError(f"--baseline: there is a baseline for --task classify, lm and qa, not for "
                        f"{'harness tasks' if task is None else '--task ' + task}")
    if task == "lm" and objective == "mlm":
        raise UserError(f"--baseline: the n-gram baseline compares bits per byte, which a masked LM "
                        f"({config.checkpoint}) does not report; use it with a causal model or a classifier")
    if dataset is None:
        raise UserError("--baseline: trains on the train split of a dataset artifact; DATA here is raw files "
                        "(preprocess them" + (" with --label-field" if task == "classify" else "")
                        + " and evaluate the dataset)")
    if not dataset.stats["splits"].get("train", {}).get("documents"):
        raise UserError(f"{dataset.path}: --baseline trains on the train split, which is empty")
    if task == "classify":
        baselines.require_sklearn()
    if split == "train":
        notes.append("the baseline is scored on the split it was trained on (--split train)")


def _read_options(config: EvaluateConfig, task: str) -> sources.ReadOptions:
    return sources.ReadOptions(split_by=config.split_by, text_field=config.text_field,
                               text_column=config.text_column,
                               label_field=config.label_field if task == "classify" else None,
                               text_pair_field=config.text_pair_field if task == "classify" else None)


def _check_pairs(config: EvaluateConfig, task: str | None, checkpoint: Checkpoint,
                 dataset: artifacts.Artifact | None) -> None:
    """A pair classifier reads pairs of texts and any other model single texts: the other kind of data is
    refused, before any compute."""
    if config.text_pair_field is not None and (task != "classify" or dataset is not None):
        raise UserError("--text-pair-field: reads the second texts of raw files for --task classify"
                        + (f"; {dataset.path} is a dataset artifact" if dataset is not None else ""))
    if task != "classify":
        return
    reads_pairs = bool(checkpoint.head.get("pairs"))
    where = str(dataset.path) if dataset is not None else ", ".join(config.data)
    has_pairs = "pairs" in dataset.stats if dataset is not None else config.text_pair_field is not None
    if reads_pairs and not has_pairs:
        how = "preprocess it with --text-pair-field" if dataset is not None else "give --text-pair-field FIELD"
        raise UserError(f"{where}: holds single texts, but {config.checkpoint} classifies pairs of texts "
                        f"(finetuned on a pair dataset); {how}")
    if has_pairs and not reads_pairs and dataset is None:
        raise UserError(f"--text-pair-field {config.text_pair_field}: {config.checkpoint} classifies single texts, "
                        "not pairs")
    if has_pairs and not reads_pairs:
        raise UserError(f"{where}: holds pairs of texts, but {config.checkpoint} classifies single texts; finetune "
                        "a classifier on this pair dataset")


def _plan(config: EvaluateConfig) -> _Plan:
    conditions, problems = gate.parse_conditions(config.fail_if)
    if problems:  # (the config already refused these; a Python caller may have bypassed it)
        raise UserError("\n".join(problems))
    if not config.baseline:
        for condition in conditions:
            if any(name.startswith("baseline_") for name in condition.names):
                raise UserError(f"--fail-if {condition.text!r}: compares with the baseline; add --baseline")
    checkpoint = read_checkpoint(config.checkpoint)
    model_config = checkpoint.model_config
    task = _task(config, checkpoint)
    objective = ("mlm" if model_config.arch == "bert" else "clm") if task == "lm" else checkpoint.objective
    notes: list[str] = []
    metrics = _metrics(config, task, objective, notes)
    dataset, split, files = _data(config, task, checkpoint)
    if config.baseline:
        _check_baseline(config, task, objective, dataset, split, notes)
    _check_pairs(config, task, checkpoint, dataset)
    if task == "classify":  # refused before any compute
        long_text_settings(checkpoint.head, model_config.arch, checkpoint.max_len, config.long_text, config.chunk_stride)
    window = config.window or model_config.block_size
    if window > model_config.block_size:
        raise UserError(f"--window {window}: exceeds the model's block size {model_config.block_size}")
    stride = config.stride or window
    if stride > window:
        raise UserError(f"--stride {stride}: exceeds the window ({window} tokens)")
    manager = None
    if config.harness_tasks:
        if model_config.arch not in CAUSAL_ARCHS or checkpoint.task == "classify":
            raise UserError(f"--harness-tasks: the harness needs a causal language model; {config.checkpoint} is a "
                            f"{model_config.arch} {checkpoint.task} model")
        from lmkit.evaluation import harness

        manager = harness.task_manager(config.harness_include)
        harness.check_tasks(manager, config.harness_tasks, config.harness_include)
    elif conditions:  # the metric names are known now: refuse a misspelled one before any compute
        gate.check_names(conditions, metrics + [f"baseline_{m}" for m in metrics] if config.baseline else metrics,
                         f"--task {task}" + (" with --baseline" if config.baseline else ""))
    other = report_files.load_report(config.compare) if config.compare else None

    input_files = [{**artifacts.describe_file(path), "role": "data"} for path in files if path != "-"]
    if config.harness_include:
        input_files += [{**artifacts.describe_file(path), "role": "harness"}
                        for path in sorted(Path(config.harness_include).rglob("*")) if path.is_file()]
    parents = [{"role": "checkpoint", "id": checkpoint.artifact.id}]
    if dataset is not None:
        parents.append({"role": "dataset", "id": dataset.id})
    identity = {**config_lib.identity_dict(config), "split": split}
    recipe = artifacts.make_recipe("report", identity, input_files, parents)
    return _Plan(checkpoint, task, objective, metrics, dataset, split, files, window, stride, conditions, manager,
                 input_files, recipe, other, config.compare, notes)


# -- the stage -------------------------------------------------------------------------------------------
def run(config: EvaluateConfig) -> EvaluationResult:
    plan = _plan(config)
    if config.out is None:
        reporter.info("no --out: the report is printed, not saved (give --out DIR to keep it as an artifact)")
    writer_context = (artifacts.ArtifactWriter(config.out, "report", plan.recipe, force=config.force)
                      if config.out is not None else nullcontext())
    with writer_context as writer:
        if writer is not None and writer.up_to_date:
            report = json.loads(writer.existing.file(report_files.REPORT_JSON).read_text(encoding="utf-8"))
            return _finish(plan, report, writer.existing, up_to_date=True)
        report, predictions = _evaluate(config, plan)
        artifact = None
        if writer is not None:
            artifact = _write(writer, config, plan, report, predictions)
    return _finish(plan, report, artifact)


def _finish(plan: _Plan, report: dict[str, Any], artifact: artifacts.Artifact | None,
            up_to_date: bool = False) -> EvaluationResult:
    comparison = None
    if plan.other_report is not None:
        comparison = {"with": plan.compare_with, **report_files.compare(report, plan.other_report)}
    failures = gate.failures(plan.conditions, report["metrics"])
    return EvaluationResult(report, artifact, up_to_date, failures, comparison)


def _evaluate(config: EvaluateConfig, plan: _Plan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    checkpoint = plan.checkpoint
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    started = time.monotonic()
    loaded = _load_inputs(config, plan, tokenizer)  # before the model: bad input fails fast
    # Generation loads its own model (lmkit.generation); every other task scores with this one.
    scores = plan.task in ("lm", "classify", "choice", "qa") or bool(config.harness_tasks)
    model = checkpoint.inference_model().to(device) if scores else None
    inference = Inference(model, device, precision, config.batch_size, checkpoint.specials)
    reporter.info(f"evaluating {config.checkpoint} ({checkpoint.model_config.arch}, {checkpoint.objective}) on "
                  f"{device.type}, {precision}" + (f": --task {plan.task}" if plan.task else ""))
    report: dict[str, Any] = {
        "task": plan.task or "harness",
        "checkpoint": {"path": str(checkpoint.path), "id": checkpoint.artifact.id,
                       "arch": checkpoint.model_config.arch, "objective": checkpoint.objective},
        "data": _describe_data(plan),
        "examples": 0, "metrics": {}, "method": {}, "counts": {},
    }
    predictions: list[dict[str, Any]] = []
    generated_tokens, generation_seconds = 0, 0.0
    if plan.task is not None:
        outcome = _run_task(config, plan, inference, tokenizer, loaded)
        report["examples"] = outcome.examples
        report["metrics"].update({name: outcome.metrics[name] for name in plan.metrics if name in outcome.metrics})
        report["method"].update(outcome.method)
        report["counts"].update(outcome.counts)
        report.update(outcome.extra)
        predictions = outcome.predictions
        generated_tokens, generation_seconds = outcome.generated_tokens, outcome.generation_seconds
        if config.baseline:
            baseline = _baseline(config, plan, tokenizer, loaded, predictions)
            shared = [name for name in plan.metrics if name in baseline["metrics"] and name in report["metrics"]]
            report["metrics"].update({f"baseline_{name}": baseline["metrics"][name] for name in shared})
            baseline["difference"] = {name: report["metrics"][name] - baseline["metrics"][name] for name in shared}
            report["baseline"] = baseline
    if config.harness_tasks:
        harness_result = _run_harness(config, plan, inference, tokenizer)
        report["metrics"].update(harness_result["metrics"])
        report["method"]["harness"] = harness_result["method"]
        report["harness"] = {"results": harness_result["results"], "versions": harness_result["versions"]}
    # Tokens through the model per second of model time: scored (input) tokens, and generated ones.
    tokens = inference.tokens + generated_tokens
    seconds = inference.seconds + generation_seconds
    report["speed"] = {"tokens": tokens, "seconds": round(seconds, 4),
                       "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else 0.0,
                       "device": device.type, "precision": precision,
                       "wall_seconds": round(time.monotonic() - started, 3)}
    report["notes"] = list(plan.notes)
    return report, predictions


def _load_inputs(config: EvaluateConfig, plan: _Plan, tokenizer: Tokenizer) -> Any:
    """The task's input: Documents for lm and classify, items for choice and generate, examples for qa."""
    if plan.task == "qa":
        examples: list = []
        for path in plan.files:
            examples += read_qa(path, with_answers=True, limit=config.limit - len(examples) if config.limit else 0)
            if config.limit and len(examples) >= config.limit:
                break
        return examples
    if plan.task in ("choice", "generate"):
        items: list = []
        for path in plan.files:
            left = config.limit - len(items) if config.limit else 0
            if plan.task == "choice":
                items += choice.read_choice_file(path, left)
            else:
                items += generation_tasks.read_generation_file(path, config.prompt_field, config.response_field, left)
            if config.limit and len(items) >= config.limit:
                break
        if not items:
            raise UserError(f"{', '.join(plan.files)}: no examples to evaluate (the files are empty)")
        return items
    if plan.task is None:
        return None
    if plan.dataset is not None:
        documents = inputs.from_dataset(plan.dataset, plan.split, config.limit)
    else:
        documents = inputs.from_files(plan.files, tokenizer, _read_options(config, plan.task), config.limit)
    if plan.task == "classify":
        where = f"{plan.dataset.path} ({plan.split})" if plan.dataset is not None else ", ".join(plan.files)
        flag = "preprocess with --label-field" if plan.dataset is not None else f"--label-field {config.label_field}"
        inputs.require_labels(documents, where, flag)
    return documents


def _run_task(config: EvaluateConfig, plan: _Plan, inference: Inference, tokenizer: Tokenizer,
              loaded: Any) -> tasks.TaskOutcome:
    checkpoint, model_config = plan.checkpoint, plan.checkpoint.model_config
    if plan.task == "lm" and plan.objective == "mlm":
        masking = MaskingSettings(config.mask_prob, config.mask_replace, config.mask_random)
        return tasks.masked_lm(inference, loaded, plan.window, model_config.vocab_size, masking, config.seed)
    if plan.task == "lm":
        return tasks.causal_lm(inference, loaded, plan.window, plan.stride)
    if plan.task == "classify":
        where = str(plan.dataset.path) if plan.dataset is not None else ", ".join(plan.files)
        long_text, stride = long_text_settings(checkpoint.head, model_config.arch, checkpoint.max_len,
                                               config.long_text, config.chunk_stride)
        return tasks.classify(inference, loaded, loaded.labels, checkpoint.labels, model_config.arch,
                              checkpoint.max_len, where, long_text, stride)
    if plan.task == "choice":
        return tasks.multiple_choice(inference, tokenizer, loaded, plan.window)
    if plan.task == "qa":
        return question_answering.question_answering(inference, tokenizer, loaded, QASettings.from_head(checkpoint.qa))
    stop = config.stop_strings()
    settings = {"temperature": 0.0, "max_new_tokens": config.max_new_tokens, "stop": list(stop),
                "prompt": "the checkpoint's SFT template" if checkpoint.template else "after </s>, as is"}
    return tasks.generate(_generator(plan, inference, config.max_new_tokens, stop), tokenizer, loaded,
                          plan.metrics, config.batch_size, settings)


def _baseline(config: EvaluateConfig, plan: _Plan, tokenizer: Tokenizer, documents: inputs.Documents,
              predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """The baseline trained on the dataset's train split, scored on the evaluated documents: its method,
    metrics and difference (model - baseline). A classifier's predictions records gain the baseline's label."""
    import numpy as np

    if plan.task == "qa":
        started = time.monotonic()
        metrics, method = question_answering.first_sentence_baseline(documents, predictions)
        method["seconds"] = round(time.monotonic() - started, 3)
        return {"method": method, "metrics": metrics}
    train = inputs.from_dataset(plan.dataset, "train")
    started = time.monotonic()
    reporter.info(f"baseline: training on {len(train):,} documents of {plan.dataset.path}'s train split")
    if plan.task == "lm":
        metrics, method = baselines.ngram_bits_per_byte(train.tokens, documents.tokens, documents.n_bytes,
                                                        tokenizer.vocab_size)
    else:
        from lmkit.data.split import stratified_split
        from lmkit.evaluation.metrics import classification_metrics

        def texts(docs: inputs.Documents) -> list[str]:  # a pair's texts on two lines
            found = [tokenizer.decode(np.asarray(t).tolist()) for t in docs.tokens]
            if docs.pairs is not None:
                found = [f"{text}\n{tokenizer.decode(np.asarray(t).tolist())}" for text, t in zip(found, docs.pairs)]
            return found

        train_texts, train_labels = texts(train), np.asarray(train.labels)
        if plan.dataset.stats["splits"].get("validation", {}).get("documents"):
            validation = inputs.from_dataset(plan.dataset, "validation")
            val_texts, val_labels = texts(validation), np.asarray(validation.labels)
        else:  # as finetuning does: a stratified tenth of train chooses C, then all of train is fitted
            names = sorted(set(train_labels))
            keep, held = stratified_split(np.array([names.index(n) for n in train_labels]), 0.1, config.seed)
            val_texts, val_labels = [train_texts[i] for i in held], train_labels[held]
            train_texts, train_labels = [train_texts[i] for i in keep], train_labels[keep]
        fitted = baselines.tfidf_classifier(train_texts, train_labels, val_texts, val_labels, texts(documents))
        labels = list(plan.checkpoint.labels)
        labels += sorted(set(fitted.predictions) - set(labels))
        index = {name: k for k, name in enumerate(labels)}
        result = classification_metrics(np.array([index[n] for n in documents.labels]),
                                        np.array([index[n] for n in fitted.predictions]), labels)
        metrics, method = result["metrics"], fitted.method
        for record, predicted in zip(predictions, fitted.predictions):
            record["baseline_predicted"] = str(predicted)
    method["seconds"] = round(time.monotonic() - started, 3)
    return {"method": method, "metrics": metrics}


def _generator(plan: _Plan, inference: Inference, max_new_tokens: int, stop: tuple[str, ...]):
    """Greedy answers to a batch of prompts, from lmkit.generation (which applies the SFT template)."""
    from lmkit.generation import Generator, SamplingSettings

    generator = Generator(plan.checkpoint, inference.device, inference.precision, batch_size=inference.batch_size)

    def generate(prompts: list[str], max_tokens: int = max_new_tokens, stops=stop) -> list[str]:
        settings = SamplingSettings(temperature=0.0, max_new_tokens=max_tokens, stop=tuple(stops))
        return generator.generate(prompts, settings)

    return generate


def _run_harness(config: EvaluateConfig, plan: _Plan, inference: Inference, tokenizer: Tokenizer) -> dict[str, Any]:
    from lmkit.evaluation import harness

    generate = _generator(plan, inference, config.max_new_tokens, ())
    lm = harness.make_lm(inference, tokenizer, plan.window, plan.stride, generate)
    reporter.info(f"running harness task(s) {', '.join(config.harness_tasks)}")
    result = harness.run_tasks(lm, plan.harness_manager, config.harness_tasks, config.limit, config.seed)
    import lm_eval

    result["method"] = {"tasks": list(config.harness_tasks), "limit": config.limit, "window": plan.window,
                        "stride": plan.stride, "bootstrap_iters": 0, "lm_eval_version": lm_eval.__version__}
    return result


def _describe_data(plan: _Plan) -> dict[str, Any] | None:
    if plan.dataset is not None:
        return {"kind": "dataset", "path": str(plan.dataset.path), "id": plan.dataset.id, "split": plan.split}
    if plan.files:
        return {"kind": "files", "files": list(plan.files)}
    return None


def _write(writer: artifacts.ArtifactWriter, config: EvaluateConfig, plan: _Plan, report: dict[str, Any],
           predictions: list[dict[str, Any]]) -> artifacts.Artifact:
    files = {"report_json": report_files.REPORT_JSON, "report_md": report_files.REPORT_MD}
    if predictions:
        report_files.write_predictions(writer.tmp / report_files.PREDICTIONS, predictions)
        files["predictions"] = report_files.PREDICTIONS
    if report.get("confusion"):
        if report_files.write_confusion_png(writer.tmp / report_files.CONFUSION_PNG, report["confusion"]["labels"],
                                            report["confusion"]["matrix"]):
            files["confusion_png"] = report_files.CONFUSION_PNG
        else:
            report["notes"].append(f"confusion.png not written: install {report_files.PLOT_EXTRA} (matplotlib) "
                                   "for it")
    report["files"] = files
    artifacts.write_json_durable(writer.tmp / report_files.REPORT_JSON, report)
    (writer.tmp / report_files.REPORT_MD).write_text(report_files.markdown(report), encoding="utf-8")
    parents = [artifacts.describe_parent("checkpoint", plan.checkpoint.artifact, writer.out)]
    if plan.dataset is not None:
        parents.append(artifacts.describe_parent("dataset", plan.dataset, writer.out))
    stats = {"task": report["task"], "examples": report["examples"], "metrics": report["metrics"],
             "tokens_per_s": report["speed"]["tokens_per_s"]}
    return writer.commit(config_lib.as_dict(config), {"artifacts": parents, "files": plan.input_files}, stats)
