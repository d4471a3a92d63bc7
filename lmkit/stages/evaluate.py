"""``lmkit evaluate``: a checkpoint measured on a dataset split or raw files, into a report artifact.

The checkpoint's task (lmkit.tasks) says which evaluations it offers (``--task``), their metrics, how each
reads its inputs, scores them and runs its baseline; this stage checks everything before any compute (the
evaluation against the checkpoint, the data and its tokenizer, the metrics, the harness tasks, the flags the
evaluation reads, the ``--fail-if`` conditions and the output directory), runs it, and writes the report.
The report is written (when ``--out`` is given) before the gate is applied, so a failing CI run still
leaves its report behind.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit import artifacts, tasks
from lmkit import config as config_lib
from lmkit.checkpoint import Checkpoint, read_checkpoint
from lmkit.data import sources
from lmkit.devices import resolve_device, resolve_precision
from lmkit.errors import UserError
from lmkit.evaluation import gate, generation_tasks, inputs
from lmkit.evaluation import report as report_files
from lmkit.evaluation.rewards import code_files
from lmkit.evaluation.scoring import Inference
from lmkit.progress import reporter
from lmkit.stages.evaluate_config import EvaluateConfig
from lmkit.tasks.base import DOCUMENTS, EvalPlan, Evaluation, TaskSpec, article, read_documents
from lmkit.tokenizer import Tokenizer

METRICS_EXTRA = "lmkit[metrics]"
DOCUMENT_FLAGS = ("split_by", "text_field", "text_column")  # how raw text files become documents
HARNESS_FLAGS = ("window", "stride", "seed", "max_new_tokens")  # what --harness-tasks reads


@dataclass
class EvaluationResult:
    """What a run produced: the report (as in report.json), where it was saved, and the gate's verdict."""

    report: dict[str, Any]
    artifact: artifacts.Artifact | None          # None without --out
    up_to_date: bool = False
    failures: list[str] = field(default_factory=list)   # --fail-if conditions that held
    comparison: dict[str, Any] | None = None             # --compare: "with" (the other report), rows, warnings


# -- checks before compute -----------------------------------------------------------------------------
def _evaluation(config: EvaluateConfig, checkpoint: Checkpoint, spec: TaskSpec) -> Evaluation | None:
    """The evaluation ``--task`` names (auto: the kind's first), or the refusal that says what would fit."""
    if not config.data:
        if config.task != "auto":
            raise UserError(f"--task {config.task}: needs DATA (a dataset artifact or files)")
        return None
    if config.task == "auto":
        return spec.evaluations[0]
    chosen = spec.evaluation(config.task)
    if chosen is not None:
        return chosen
    wanted = next(e for other in tasks.TASKS.values() for e in other.evaluations if e.name == config.task)
    where, arch = config.checkpoint, checkpoint.model_config.arch
    if not spec.lm_head:
        raise UserError(f"--task {config.task}: {where} is {article(spec.summary)} without a language-model head; "
                        f"use --task {spec.evaluations[0].name}")
    if wanted.make:
        raise UserError(f"--task {config.task}: {where} is not {wanted.needs} (it is a {checkpoint.objective} {arch} "
                        f"model); finetune one with {wanted.make}")
    raise UserError(f"--task {config.task}: needs {wanted.needs}; {where} is a {arch} {spec.summary}")


def _check_flags(config: EvaluateConfig, evaluation: Evaluation | None) -> None:
    """A flag given for what this run does not do (a flag of another evaluation, of raw text files, of the
    harness) is refused, naming what reads it."""
    given = config_lib.changed_by_user(config)  # given, and not the default: a --print-config dump reads back
    readers: dict[str, list[str]] = {}
    for spec in tasks.TASKS.values():
        for each in spec.evaluations:
            for name in each.flags + (DOCUMENT_FLAGS if each.reads == DOCUMENTS else ()):
                readers.setdefault(name, []).append(each.called)
    for name in HARNESS_FLAGS:
        readers.setdefault(name, []).append("--harness-tasks")
    read = set(HARNESS_FLAGS if config.harness_tasks else ())
    if evaluation is not None:
        read |= set(evaluation.flags + (DOCUMENT_FLAGS if evaluation.reads == DOCUMENTS else ()))
    unread = [name for name in EvaluateConfig.__dataclass_fields__
              if name in readers and name in given and name not in read]
    if unread:
        doing = evaluation.called if evaluation is not None else "--harness-tasks"
        raise UserError("; ".join(f"{config_lib.flag_name(name)}: read by {', '.join(dict.fromkeys(readers[name]))}, "
                                  f"not by {doing}" for name in unread))


def _metrics(config: EvaluateConfig, evaluation: Evaluation | None, notes: list[str]) -> list[str]:
    if evaluation is None:
        if config.metrics:
            raise UserError("--metrics: chooses among a task's metrics; harness tasks report their own")
        return []
    offered = evaluation.offered(config)
    wrong = [m for m in config.metrics if m not in offered]
    if wrong:
        raise UserError(f"--metrics: {', '.join(wrong)} not computed by {evaluation.called}; its metrics: "
                        f"{', '.join(offered)}")
    chosen = list(config.metrics or offered)
    for metric in list(chosen):
        module = generation_tasks.missing_extra(metric)
        if module is None:
            continue
        if config.metrics:
            raise UserError(f"--metrics {metric}: needs the {module} package; install {METRICS_EXTRA}")
        chosen.remove(metric)
        notes.append(f"{metric} not computed: install {METRICS_EXTRA} for it")
    return chosen


def _data(config: EvaluateConfig, evaluation: Evaluation | None, checkpoint: Checkpoint
          ) -> tuple[artifacts.Artifact | None, str | None, list[str]]:
    """(dataset, split, raw files): exactly one of a dataset artifact or raw files."""
    if not config.data:
        return None, None, []
    reads_documents = evaluation is None or evaluation.reads == DOCUMENTS
    datasets = [path for path in config.data if inputs.is_dataset(path)]
    if datasets:
        if len(config.data) > 1:
            raise UserError(f"DATA: {datasets[0]} is a dataset artifact; evaluate one dataset at a time, "
                            "without other files")
        if not reads_documents:
            raise UserError(f"--task {evaluation.name}: reads JSONL files, not a dataset artifact ({datasets[0]})")
        dataset = artifacts.load(datasets[0], kind="dataset")
        inputs.require_same_tokenizer(dataset, checkpoint, config.checkpoint, ", or pass the raw files instead")
        return dataset, inputs.choose_split(dataset, config.split), []
    if config.split != "auto":
        raise UserError(f"--split {config.split}: applies to a dataset artifact; DATA here is raw files")
    if reads_documents:
        return None, None, sources.resolve_inputs(config.data)
    for path in config.data:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file (--task {evaluation.name} reads JSONL files)")
        if not path.endswith((".jsonl", ".ndjson")):
            raise UserError(f"{path}: --task {evaluation.name} reads JSON Lines files (.jsonl)")
    return None, None, list(config.data)


def _check_baseline(plan: EvalPlan) -> None:
    """--baseline needs an evaluation with a baseline and, for one that learns, a dataset whose train split
    it can learn from."""
    evaluation, config = plan.evaluation, plan.config
    if evaluation is not None and evaluation.no_baseline:
        raise UserError(f"--baseline: {evaluation.no_baseline.format(checkpoint=config.checkpoint)}")
    if evaluation is None or evaluation.baseline is None:
        having = sorted({e.name for spec in tasks.TASKS.values() for e in spec.evaluations if e.baseline})
        raise UserError(f"--baseline: there is a baseline for --task {', '.join(having[:-1])} and {having[-1]}, not "
                        f"for {'harness tasks' if evaluation is None else evaluation.called}")
    baseline = evaluation.baseline
    if baseline.trains:
        if plan.dataset is None:
            raise UserError("--baseline: trains on the train split of a dataset artifact; DATA here is raw files "
                            f"(preprocess them{baseline.preprocess} and evaluate the dataset)")
        if not plan.dataset.stats["splits"].get("train", {}).get("documents"):
            raise UserError(f"{plan.dataset.path}: --baseline trains on the train split, which is empty")
        if plan.split == "train":
            plan.notes.append("the baseline is scored on the split it was trained on (--split train)")
    if baseline.check is not None:
        baseline.check()


def _plan(config: EvaluateConfig) -> EvalPlan:
    conditions, problems = gate.parse_conditions(config.fail_if)
    if problems:  # (the config already refused these; a Python caller may have bypassed it)
        raise UserError("\n".join(problems))
    if not config.baseline:
        for condition in conditions:
            if any(name.startswith("baseline_") for name in condition.names):
                raise UserError(f"--fail-if {condition.text!r}: compares with the baseline; add --baseline")
    checkpoint = read_checkpoint(config.checkpoint)
    model_config = checkpoint.model_config
    spec = tasks.for_checkpoint(checkpoint)
    evaluation = _evaluation(config, checkpoint, spec)
    _check_flags(config, evaluation)
    notes: list[str] = []
    metrics = _metrics(config, evaluation, notes)
    dataset, split, files = _data(config, evaluation, checkpoint)
    window = config.window or model_config.block_size
    if window > model_config.block_size:
        raise UserError(f"--window {window}: exceeds the model's block size {model_config.block_size}")
    stride = config.stride or window
    if stride > window:
        raise UserError(f"--stride {stride}: exceeds the window ({window} tokens)")
    manager = None
    if config.harness_tasks:
        if not spec.harness:
            raise UserError(f"--harness-tasks: the harness needs a causal language model; {config.checkpoint} is a "
                            f"{model_config.arch} {spec.summary}")
        from lmkit.evaluation import harness

        manager = harness.task_manager(config.harness_include)
        harness.check_tasks(manager, config.harness_tasks, config.harness_include)
    elif conditions:  # the metric names are known now: refuse a misspelled one before any compute
        gate.check_names(conditions, metrics + [f"baseline_{m}" for m in metrics] if config.baseline else metrics,
                         f"--task {evaluation.name}" + (" with --baseline" if config.baseline else ""))
    other = report_files.load_report(config.compare) if config.compare else None

    input_files = [{**artifacts.describe_file(path), "role": "data"} for path in files if path != "-"]
    if evaluation is not None and "reward" in evaluation.flags:  # a reward function's code, by its content
        input_files += [{**artifacts.describe_file(path), "role": "reward"} for path in code_files(config.reward)
                        if Path(path).is_file()]
    if config.harness_include:
        input_files += [{**artifacts.describe_file(path), "role": "harness"}
                        for path in sorted(Path(config.harness_include).rglob("*")) if path.is_file()]
    parents = [{"role": "checkpoint", "id": checkpoint.artifact.id}]
    if config.reference:  # a checkpoint by its id, as the evaluated one
        parents.append({"role": "reference", "id": read_checkpoint(config.reference).artifact.id})
    if dataset is not None:
        parents.append({"role": "dataset", "id": dataset.id})
    identity = {**config_lib.identity_dict(config), "split": split}
    recipe = artifacts.make_recipe("report", identity, input_files, parents)
    plan = EvalPlan(config, checkpoint, spec, evaluation, metrics, dataset, split, files, window, stride, conditions,
                    manager, input_files, recipe, other, notes)
    if config.baseline:
        _check_baseline(plan)
    if evaluation is not None and evaluation.check is not None:
        evaluation.check(plan)
    return plan


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


def _finish(plan: EvalPlan, report: dict[str, Any], artifact: artifacts.Artifact | None,
            up_to_date: bool = False) -> EvaluationResult:
    comparison = None
    if plan.other_report is not None:
        comparison = {"with": plan.config.compare, **report_files.compare(report, plan.other_report)}
    failures = gate.failures(plan.conditions, report["metrics"])
    return EvaluationResult(report, artifact, up_to_date, failures, comparison)


def _evaluate(config: EvaluateConfig, plan: EvalPlan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    checkpoint, evaluation = plan.checkpoint, plan.evaluation
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    started = time.monotonic()
    loaded = None  # the evaluation's input, read before the model: bad input fails fast
    if evaluation is not None:
        loaded = evaluation.load(plan, tokenizer) if evaluation.load else read_documents(plan, tokenizer)
    # Generation loads its own model (lmkit.generation); every other evaluation scores with this one.
    scores = (evaluation is not None and not evaluation.own_model) or bool(config.harness_tasks)
    model = checkpoint.inference_model().to(device) if scores else None
    inference = Inference(model, device, precision, config.batch_size, checkpoint.specials)
    reporter.info(f"evaluating {config.checkpoint} ({checkpoint.model_config.arch}, {checkpoint.objective}) on "
                  f"{device.type}, {precision}" + (f": --task {evaluation.name}" if evaluation else ""))
    report: dict[str, Any] = {
        "task": evaluation.name if evaluation else "harness",
        "checkpoint": {"path": str(checkpoint.path), "id": checkpoint.artifact.id,
                       "arch": checkpoint.model_config.arch, "objective": checkpoint.objective},
        "data": _describe_data(plan),
        "examples": 0, "metrics": {}, "method": {}, "counts": {},
    }
    predictions: list[dict[str, Any]] = []
    generated_tokens, generation_seconds = 0, 0.0
    if evaluation is not None:
        outcome = evaluation.run(plan, inference, tokenizer, loaded)
        report["examples"] = outcome.examples
        report["metrics"].update({name: outcome.metrics[name] for name in plan.metrics if name in outcome.metrics})
        report["method"].update(outcome.method)
        report["counts"].update(outcome.counts)
        report.update(outcome.extra)
        predictions = outcome.predictions
        generated_tokens, generation_seconds = outcome.generated_tokens, outcome.generation_seconds
        if config.baseline:
            baseline = _baseline(plan, tokenizer, loaded, predictions)
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


def _baseline(plan: EvalPlan, tokenizer: Tokenizer, loaded: Any, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation's baseline scored on the evaluated inputs: its method, metrics and, added by the caller,
    the difference (model - baseline)."""
    baseline = plan.evaluation.baseline
    started = time.monotonic()
    if baseline.trains:
        documents = plan.dataset.stats["splits"]["train"]["documents"]
        reporter.info(f"baseline: training on {documents:,} documents of {plan.dataset.path}'s train split")
    metrics, method = baseline.run(plan, tokenizer, loaded, predictions)
    method["seconds"] = round(time.monotonic() - started, 3)
    return {"method": method, "metrics": metrics}


def _run_harness(config: EvaluateConfig, plan: EvalPlan, inference: Inference, tokenizer: Tokenizer) -> dict[str, Any]:
    from lmkit.evaluation import harness
    from lmkit.tasks.text import greedy

    generate = greedy(plan.checkpoint, inference, config.max_new_tokens, ())
    lm = harness.make_lm(inference, tokenizer, plan.window, plan.stride, generate)
    reporter.info(f"running harness task(s) {', '.join(config.harness_tasks)}")
    result = harness.run_tasks(lm, plan.harness_manager, config.harness_tasks, config.limit, config.seed)
    import lm_eval

    result["method"] = {"tasks": list(config.harness_tasks), "limit": config.limit, "window": plan.window,
                        "stride": plan.stride, "bootstrap_iters": 0, "lm_eval_version": lm_eval.__version__}
    return result


def _describe_data(plan: EvalPlan) -> dict[str, Any] | None:
    if plan.dataset is not None:
        return {"kind": "dataset", "path": str(plan.dataset.path), "id": plan.dataset.id, "split": plan.split}
    if plan.files:
        return {"kind": "files", "files": list(plan.files)}
    return None


def _write(writer: artifacts.ArtifactWriter, config: EvaluateConfig, plan: EvalPlan, report: dict[str, Any],
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
    if config.reference:
        parents.append(artifacts.describe_parent("reference", read_checkpoint(config.reference).artifact, writer.out))
    if plan.dataset is not None:
        parents.append(artifacts.describe_parent("dataset", plan.dataset, writer.out))
    stats = {"task": report["task"], "examples": report["examples"], "metrics": report["metrics"],
             "tokens_per_s": report["speed"]["tokens_per_s"]}
    return writer.commit(config_lib.as_dict(config), {"artifacts": parents, "files": plan.input_files}, stats)
