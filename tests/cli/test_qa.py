"""Extractive question answering as a user runs it: finetune --task qa, evaluate, generate, on the command line."""

import json

from tests.conftest import invoke_lmkit

FAST = ["--max-steps", "4", "--eval-every", "2", "--micro-batch", "8", "--seq-len", "48", "--precision", "fp32"]


def test_finetune_evaluate_generate(bases, qa_file, tmp_path):
    run = tmp_path / "run"
    result = invoke_lmkit("finetune", str(bases["bert"]), str(qa_file), "--out", str(run), *FAST)
    assert result.returncode == 0, result.stderr
    assert "task qa" in result.stdout and "val_f1" in result.stdout and "point at [CLS]" in result.stderr
    result = invoke_lmkit("evaluate", str(run / "final"), str(qa_file), "--baseline", "--limit", "10",
                          "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    assert "exact_match" in result.stdout and "baseline" in result.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["counts"]["questions"] == 10 and 0 <= report["metrics"]["f1"] <= 1
    record = json.loads(qa_file.read_text().splitlines()[0])
    one = invoke_lmkit("generate", str(run / "final"), "--question", record["question"], "--context", record["context"])
    assert one.returncode == 0, one.stderr
    answer = one.stdout.rstrip("\n")
    assert answer and answer in record["context"]
    context_file = tmp_path / "context.txt"
    context_file.write_text(record["context"])
    from_file = invoke_lmkit("generate", str(run / "final"), "--question", record["question"], "--context-file",
                             str(context_file))
    assert from_file.stdout == one.stdout
    many = invoke_lmkit("generate", str(run / "final"), "--input", str(qa_file))
    assert many.returncode == 0, many.stderr
    outputs = [json.loads(line) for line in many.stdout.splitlines()]
    assert len(outputs) == len(qa_file.read_text().splitlines()) and outputs[0]["answer"] == answer
    first = outputs[0]
    assert first["context"][first["start"]:first["end"]] == answer and isinstance(first["score"], float)


def test_bad_qa_input_is_one_line_naming_the_place(qa_checkpoint, tmp_path):
    # (a mismatched answer in finetune: tests/stages/test_qa.py)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "q"}) + "\n")
    result = invoke_lmkit("generate", str(qa_checkpoint), "--input", str(missing))
    assert result.returncode == 1 and f"error: {missing}:1: field 'context' is missing" in result.stderr
    result = invoke_lmkit("generate", str(qa_checkpoint), "What is the code?")
    assert result.returncode == 1 and "answers questions from a context; give --question" in result.stderr
    result = invoke_lmkit("evaluate", str(qa_checkpoint), str(missing), "--out", str(tmp_path / "report"))
    assert result.returncode == 1 and "field 'context' is missing" in result.stderr
    assert not (tmp_path / "report").exists()


def test_export_and_attribution_refuse_a_span_model_and_attention_reads_its_body(qa_checkpoint, tmp_path):
    import pytest

    from lmkit.checkpoint import read_checkpoint
    from lmkit.errors import UserError
    from lmkit.interop.hf_export import refusals
    from lmkit.interpret.attention import attention_maps
    from lmkit.interpret.attribution import explained_output

    exported = invoke_lmkit("export", str(qa_checkpoint), "--out", str(tmp_path / "hf"))
    assert exported.returncode == 1 and "a question-answering (span) model" in exported.stderr
    assert not (tmp_path / "hf").exists()
    checkpoint = read_checkpoint(qa_checkpoint)
    assert refusals(checkpoint) == [f"{checkpoint.path}: a question-answering (span) model; lmkit exports language "
                                    "models and classifiers, not BertForQuestionAnswering"]
    with pytest.raises(UserError, match="output is a span of a context"):
        explained_output(checkpoint)
    maps = attention_maps(checkpoint, checkpoint.inference_model(), "What is the code?")
    assert len(maps.weights) == checkpoint.model_config.n_layer
