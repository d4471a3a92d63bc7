"""Generation tasks for instruction-tuned (SFT) checkpoints: greedy answers to prompts, scored against
references by exact match and, with the ``lmkit[metrics]`` extra, chrF and BLEU (sacrebleu; Popović
2015, Papineni et al. 2002) and ROUGE-L F1 (rouge-score; Lin 2004).

Items are JSON Lines with a prompt and a reference answer (field names set by the caller). The
checkpoint's SFT template is applied by the generator, as in ``lmkit generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lmkit.data.jsonl import read_jsonl
from lmkit.errors import UserError

GENERATION_METRICS = ("exact_match", "chrf", "bleu", "rouge_l")
_EXTRA_METRICS = {"chrf": "sacrebleu", "bleu": "sacrebleu", "rouge_l": "rouge_score"}


@dataclass(frozen=True)
class GenerationItem:
    id: str
    prompt: str
    reference: str


def read_generation_file(path: str, prompt_field: str, response_field: str, limit: int = 0) -> list[GenerationItem]:
    items = []
    for where, record in read_jsonl(path, f"a JSON object with a string field '{prompt_field}' (--prompt-field)"):
        if not isinstance(record.get(prompt_field), str):
            raise UserError(f"{where}: no string field '{prompt_field}' (--prompt-field)")
        reference = record.get(response_field)
        if not isinstance(reference, str):
            raise UserError(f"{where}: no reference answer at '{response_field}' (--response-field); "
                            "generation metrics compare against it")
        items.append(GenerationItem(str(record.get("id", where)), record[prompt_field], reference))
        if limit and len(items) >= limit:
            break
    return items


def missing_extra(metric: str) -> str | None:
    """The Python module a metric needs when it is not installed, else None."""
    module = _EXTRA_METRICS.get(metric)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return module
    return None


def text_metrics(predictions: list[str], references: list[str], names: list[str]) -> dict[str, float]:
    """Corpus-level scores of predictions against one reference each; chrF and BLEU on sacrebleu's
    0-100 scale, exact match and ROUGE-L F1 in [0, 1]. Exact match compares stripped strings."""
    scores: dict[str, float] = {}
    if "exact_match" in names:
        scores["exact_match"] = sum(p.strip() == r.strip()
                                    for p, r in zip(predictions, references)) / len(references)
    if "chrf" in names or "bleu" in names:
        import sacrebleu

        if "chrf" in names:
            scores["chrf"] = float(sacrebleu.corpus_chrf(predictions, [references]).score)
        if "bleu" in names:
            scores["bleu"] = float(sacrebleu.corpus_bleu(predictions, [references]).score)
    if "rouge_l" in names:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"])
        scores["rouge_l"] = sum(scorer.score(r, p)["rougeL"].fmeasure
                                for p, r in zip(predictions, references)) / len(references)
    return scores


def evaluate_generation(generate: Callable[[list[str]], list[str]], items: list[GenerationItem], names: list[str],
                        batch_size: int, advance: Callable[[int], None] | None = None
                        ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, prediction records); ``generate`` maps a batch of prompts to answers."""
    outputs: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        outputs += generate([item.prompt for item in batch])
        if advance is not None:
            advance(len(batch))
    references = [item.reference for item in items]
    metrics = text_metrics(outputs, references, names)
    predictions = [{"id": item.id, "prompt": item.prompt, "gold": item.reference, "predicted": output}
                   for item, output in zip(items, outputs)]
    return metrics, predictions
