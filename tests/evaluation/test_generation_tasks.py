"""Generation-task metrics: exact match by hand, chrF/BLEU/ROUGE-L as the libraries compute them."""

import json

import pytest

from lmkit.errors import UserError
from lmkit.evaluation.generation_tasks import (
    GenerationItem,
    evaluate_generation,
    missing_extra,
    read_generation_file,
    text_metrics,
)


def test_exact_match_compares_stripped_text():
    scores = text_metrics([" Paris\n", "london", "4"], ["Paris", "London", "4"], ["exact_match"])
    assert scores == {"exact_match": pytest.approx(2 / 3)}


def test_library_metrics_equal_the_libraries():
    sacrebleu = pytest.importorskip("sacrebleu")
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    predictions = ["the cat sat on the mat", "a dog barked loudly"]
    references = ["the cat sat on a mat", "the dog barked"]
    scores = text_metrics(predictions, references, ["chrf", "bleu", "rouge_l"])
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / 2
    assert scores["rouge_l"] == pytest.approx(expected)
    # ROUGE-L by hand for the first pair: LCS "the cat sat on mat" = 5 of 6 tokens each way.
    assert scorer.score(references[0], predictions[0])["rougeL"].fmeasure == pytest.approx(5 / 6)


def test_evaluate_generation_batches_prompts_and_records_predictions():
    items = [GenerationItem(str(i), f"prompt {i}", f"answer {i}") for i in range(5)]
    batches = []

    def generate(prompts):
        batches.append(len(prompts))
        return [p.replace("prompt", "answer") if p != "prompt 3" else "wrong" for p in prompts]

    metrics, predictions = evaluate_generation(generate, items, ["exact_match"], batch_size=2)
    assert batches == [2, 2, 1] and metrics == {"exact_match": 0.8}
    assert predictions[3] == {"id": "3", "prompt": "prompt 3", "gold": "answer 3", "predicted": "wrong"}


def test_generation_files_need_prompt_and_reference(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n" + json.dumps({"prompt": "q2"}) + "\n")
    with pytest.raises(UserError, match=rf"{path}:2: no reference answer at 'response' \(--response-field\)"):
        read_generation_file(str(path), "prompt", "response")
    assert read_generation_file(str(path), "prompt", "response", limit=1) == [GenerationItem(f"{path}:1", "q", "a")]
    with pytest.raises(UserError, match=rf"{path}:1: no string field 'question' \(--prompt-field\)"):
        read_generation_file(str(path), "question", "response")


def test_missing_extra_names_the_module(monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "sacrebleu" else real_import(name, *a, **k))
    assert missing_extra("chrf") == "sacrebleu" and missing_extra("exact_match") is None
