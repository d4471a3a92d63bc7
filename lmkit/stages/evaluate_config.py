"""Configuration of ``lmkit evaluate``: every field is a flag and a key of ``--config``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lmkit.config import flag_name, option, validate
from lmkit.evaluation.gate import parse_conditions

SPLITS = ("auto", "train", "validation", "test")


@dataclass(kw_only=True)
class EvaluateConfig:
    # -- what to evaluate -------------------------------------------------------------------------
    checkpoint: str = option(help="Checkpoint artifact to evaluate (e.g. runs/gpt/final).", positional=True,
                             affects_output=False)  # its id, not its path, goes into the report's identity
    data: list[str] = option([], "A dataset artifact (evaluated on --split), or raw files: text/JSONL/CSV... for "
                             "--task lm and classify, JSONL for choice, generate and qa. Optional with "
                             "--harness-tasks.",
                             positional=True, affects_output=False)
    out: str | None = option(None, "Report artifact directory (report.json, report.md, predictions.jsonl, "
                             "confusion.png); without it the report is printed and not saved.", short="-o",
                             affects_output=False)
    task: str = option("auto", "What to measure: lm (loss, perplexity, bits per byte; masked LM for BERT), classify, "
                       "choice (zero-shot multiple choice), generate (SFT answers vs references), qa (extractive "
                       "answers of a span model vs question/context/answer records, SQuAD's exact match and F1), "
                       "preference (how often a causal model ranks a pair's chosen reply above its rejected one: "
                       "prompt/chosen/rejected JSONL, as finetune --task dpo reads), pass-at-k (sampled replies "
                       "to prompt/answer JSONL scored by --reward: pass@k for each --k), or auto (by the "
                       "checkpoint: lm for language models, classify for classifiers, generate for SFT, qa for span "
                       "models).")
    split: str = option("auto", "Dataset split to evaluate; auto is validation, or test when validation is empty.",
                        choices=SPLITS)
    metrics: list[str] = option([], "Metrics to report (comma-separated; empty: every metric of the task).")
    limit: int = option(0, "Evaluate only the first N documents or examples (0: all).")
    # -- raw inputs ------------------------------------------------------------------------------------
    split_by: str = option("paragraph", "How .txt files become documents: one per line, per blank-line separated "
                           "paragraph, or per file.", choices=("line", "paragraph", "file"))
    text_field: str = option("text", "JSON field (dotted path) or parquet/arrow column holding the text.")
    text_column: str = option("text", "CSV/TSV column holding the text.")
    label_field: str = option("label", "classify: JSON field or CSV/parquet column holding the gold label.")
    text_pair_field: str | None = option(None, "classify with a pair classifier: JSON field (dotted path) or "
                                         "CSV/parquet column holding each example's second text.")
    prompt_field: str = option("prompt", "generate, pass-at-k: JSON field holding the prompt.")
    response_field: str = option("response", "generate: JSON field holding the reference answer.")
    # -- method ----------------------------------------------------------------------------------------
    window: int = option(0, "lm/choice: tokens per forward pass; 0 means the model's block size.")
    stride: int = option(0, "lm: new tokens scored per window after the first, the rest being context "
                         "(sliding window); 0 means the window (disjoint windows, the harness's rolling method).")
    mask_prob: float = option(0.15, "lm on BERT: share of tokens masked for prediction.")
    mask_replace: float = option(0.8, "lm on BERT: of the chosen, share replaced by [MASK].")
    mask_random: float = option(0.1, "lm on BERT: of the chosen, share replaced by a random token (the rest stay).")
    seed: int = option(0, "Seed of the masking (and of the harness's and pass-at-k's sampling).")
    long_text: str = option("auto", "classify: a text longer than the classifier's window is read as overlapping "
                            "chunks whose class logits are averaged (mean) or maxed per class (max), or cut to its "
                            "beginning (cut); auto: what the classifier was finetuned with (finetune --long-text; "
                            "cut for classifiers that recorded none).", choices=("auto", "mean", "max", "cut"))
    chunk_stride: int = option(0, "classify: tokens between the starts of consecutive chunks; 0: the classifier's own, "
                               "or half a window.")
    max_new_tokens: int = option(128, "generate, pass-at-k: most tokens per answer (generate: greedy decoding).")
    stop: str = option("", "generate: end an answer before any of these strings (comma-separated; escapes \\n \\t "
                       "\\r \\, \\\\ as in `lmkit generate --stop`).")
    reference: str | None = option(None, "preference: score each reply by DPO's implicit reward, the model's "
                                   "log-probability minus this reference checkpoint's (the model preference tuning "
                                   "started from; same tokenizer), instead of the model's log-probability alone.",
                                   affects_output=False)  # its id goes into the report's identity
    reward: str = option("exact", "pass-at-k: how a reply is scored against its record, as finetune --reward: exact, "
                         "number, json, regex:PATTERN, length:N, terms joined by + (number+length:64), or your own "
                         "function as MODULE:FUNCTION or PATH.py:FUNCTION, called as function(prompt, reply, record) "
                         "-> number: your own Python code, run in this process. A reply passes when every term but "
                         "length scores above 0.")
    answer_field: str = option("answer", "pass-at-k: JSON field holding the reference answer (a list: any of them).")
    samples: int = option(8, "pass-at-k: replies sampled per prompt (the n of the pass@k estimator).")
    k: list[str] = option([], "pass-at-k: the k of each pass@k reported as pass_at_K (comma-separated, each at most "
                          "--samples; unbiased estimator of Chen et al. 2021); default: 1 and --samples.")
    sampling_temperature: float = option(1.0, "pass-at-k: the temperature replies are sampled at (greedy_pass_rate "
                                         "is the greedy reply's).")
    # -- lm-evaluation-harness -----------------------------------------------------------------------------
    harness_tasks: list[str] = option([], "lm-evaluation-harness tasks to run (comma-separated; needs the "
                                      "'harness' extra of lmkit; runs offline).")
    harness_include: str | None = option(None, "Directory of local harness task files (YAML); only its tasks are "
                                         "indexed (their data_files: absolute, or relative to the current "
                                         "directory). Without it, built-in tasks whose data is already cached.",
                                         affects_output=False)  # its files' contents go into the identity
    baseline: bool = option(False, "Also score a model without a transformer, trained on the dataset's train split, "
                            "and report it beside the model as baseline_<metric>: classify, TF-IDF (word and "
                            "character n-grams) + logistic regression (needs lmkit[baselines]); lm, an interpolated "
                            "Kneser-Ney token trigram (bits per byte); qa, the context's first sentence as every "
                            "answer (no training: any JSONL file). Gate on it with e.g. --fail-if "
                            "\"accuracy<baseline_accuracy\".")
    # -- how to run, and what to do with the result ------------------------------------------------------
    batch_size: int = option(16, "Sequences per forward pass.", affects_output=False)
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the hardware supports it).",
                            choices=("auto", "bf16", "fp32"))
    device: str = option("auto", "cpu, cuda, or auto (cuda when available).", choices=("auto", "cpu", "cuda"),
                         affects_output=False)
    compare: str | None = option(None, "Another report (directory or report.json): print the metrics' differences.",
                                 affects_output=False)
    fail_if: list[str] = option([], "Exit with code 3 when a condition on the report's metrics holds, e.g. "
                                "\"accuracy<0.8\", \"bpb>1.2\" or \"accuracy<baseline_accuracy\" (NAME OP NUMBER "
                                "or NAME OP NAME, OP one of < <= > >= == !=); "
                                "several: comma-separated, joined by 'and', or the flag repeated.",
                                affects_output=False)
    force: bool = option(False, "Replace a different report already in --out.", affects_output=False)

    def __post_init__(self) -> None:
        problems = []
        for name in ("limit", "window", "stride", "seed"):
            if getattr(self, name) < 0:
                problems.append(f"{flag_name(name)}: must not be negative")
        for name in ("batch_size", "max_new_tokens", "samples"):
            if getattr(self, name) < 1:
                problems.append(f"{flag_name(name)}: must be at least 1")
        if self.window and self.stride > self.window:
            problems.append(f"--stride {self.stride}: must not exceed --window {self.window}")
        if self.window and self.window < 4:
            problems.append("--window: at least 4 tokens")
        for name in ("mask_prob", "mask_replace", "mask_random"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{flag_name(name)}: must be in [0, 1], got {getattr(self, name)}")
        if self.mask_prob <= 0:
            problems.append("--mask-prob: must be positive (masked-LM metrics need masked tokens)")
        if self.mask_replace + self.mask_random > 1.0:
            problems.append("--mask-replace + --mask-random: must not exceed 1")
        problems += self.pass_k_problems()
        if not self.sampling_temperature > 0:
            problems.append(f"--sampling-temperature: must be positive, got {self.sampling_temperature}")
        problems += self.unknown_names()
        if not self.data and not self.harness_tasks:
            problems.append("DATA: required (a dataset artifact or files), unless --harness-tasks is given")
        if self.harness_include is not None and not self.harness_tasks:
            problems.append("--harness-include: names task files for --harness-tasks; give the tasks to run")
        problems += parse_conditions(self.fail_if)[1]
        try:
            self.stop_strings()
        except ValueError as exc:
            problems.append(f"--stop: {exc}")
        validate(self, problems)

    def unknown_names(self) -> list[str]:
        """--task and --metrics names no registered task knows (lmkit.tasks: read when a command runs, never for
        --help, which loads no torch)."""
        from lmkit import tasks

        problems, evaluations, metrics = [], tasks.evaluation_names(), tasks.metric_names(self)
        if self.task != "auto" and self.task not in evaluations:
            problems.append(f"--task: '{self.task}' is not one of auto, {', '.join(evaluations)}")
        problems += [f"--metrics: '{name}' is not one of {', '.join(metrics)}" for name in self.metrics
                     if name not in metrics]
        return problems

    def pass_k(self) -> list[int]:
        """The --k values (default 1 and --samples); ValueError when one is not a whole number."""
        if not self.k:
            return sorted({1, self.samples})
        return [int(value) for value in self.k]

    def pass_k_problems(self) -> list[str]:
        try:
            values = self.pass_k()
        except ValueError:
            return [f"--k: {','.join(self.k)}: whole numbers, comma-separated (e.g. 1,8)"]
        return [f"--k {value}: must be between 1 and --samples {self.samples}" for value in values
                if not 1 <= value <= self.samples]

    def stop_strings(self) -> tuple[str, ...]:
        """The --stop strings; ValueError when the value does not parse."""
        if not self.stop:
            return ()
        try:
            from lmkit.generation.settings import parse_stop
        except ImportError:
            raise ValueError("needs lmkit.generation, which this lmkit does not have") from None
        return parse_stop(self.stop)


FIELDS = {f.name for f in dataclasses.fields(EvaluateConfig)}
