"""`lmkit generate` as a user runs it: the simple path, stdin, files, JSONL in and out, fill-mask, labels,
interactive mode, and every refused input with its message and exit code."""

import json

import pytest
from typer.testing import CliRunner

from lmkit.checkpoint import read_checkpoint
from lmkit.cli import app
from lmkit.generation import Generator, SamplingSettings
from tests.conftest import invoke_lmkit
from tests.generation import checkpoints

runner = CliRunner()
SAMPLING = ["--max-new-tokens", "12", "--temperature", "0.9", "--seed", "4"]
SETTINGS = SamplingSettings(max_new_tokens=12, temperature=0.9, seed=4)


@pytest.fixture(scope="module")
def labeler(bert, tmp_path_factory):
    return checkpoints.classifier(bert, tmp_path_factory.mktemp("classifier") / "ckpt")


@pytest.fixture(scope="module")
def expected(gpt):
    """The API's completions of a few prompts, batched together."""
    prompts = ["The for statement", "An exception is raised", "x = 1"]
    return dict(zip(prompts, Generator(read_checkpoint(gpt)).generate(prompts, SETTINGS)))


def generate(*args, input=None):
    return runner.invoke(app, ["generate", *map(str, args)], input=input)


def test_the_simple_path_prints_the_completion(gpt, expected):
    result = generate(gpt, "The for statement", *SAMPLING)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected["The for statement"] + "\n"
    echoed = generate(gpt, "The for statement", *SAMPLING, "--echo")
    assert echoed.stdout == "The for statement" + expected["The for statement"] + "\n"


def test_stdin_and_prompt_file_give_the_same_text(gpt, expected, tmp_path):
    piped = invoke_lmkit("generate", str(gpt), *SAMPLING, input="An exception is raised\n")  # as `echo ... |`
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == expected["An exception is raised"] + "\n"
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("An exception is raised\n")
    assert generate(gpt, "--prompt-file", prompt_file, *SAMPLING).stdout == piped.stdout


def test_samples_are_listed_and_the_first_is_the_single_sample(gpt, expected):
    result = generate(gpt, "x = 1", *SAMPLING, "--num-samples", "3")
    assert result.exit_code == 0, result.output
    assert "sample 1" in result.stdout and "sample 3" in result.stdout
    assert expected["x = 1"] + "\n" in result.stdout


def test_jsonl_in_and_out_keeps_the_records_and_writes_atomically(gpt, expected, tmp_path):
    source = tmp_path / "prompts.jsonl"
    records = [{"prompt": p, "id": i, "meta": {"k": [1, 2]}} for i, p in enumerate(expected)]
    source.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n" + json.dumps(records[2]) + "\n")
    out = tmp_path / "out.jsonl"
    result = generate(gpt, "--input", source, "--output", out, *SAMPLING, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # results went to the file; the note to stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == [{**r, "completion": expected[r["prompt"]]} for r in records]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "prompts.jsonl"]
    # An existing output is kept unless --force.
    refused = generate(gpt, "--input", source, "--output", out, *SAMPLING)
    assert refused.exit_code == 1 and "exists; use --force to overwrite it" in refused.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == written
    samples = generate(gpt, "--input", source, "--output", out, "--force", *SAMPLING, "--num-samples", "2")
    assert samples.exit_code == 0, samples.output
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["completions"][0] for r in again] == [expected[r["prompt"]] for r in records]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "prompts.jsonl"]  # no temporary left


def test_jsonl_without_output_goes_to_stdout(gpt, expected, tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_text(json.dumps({"prompt": "x = 1"}) + "\n")
    result = generate(gpt, "--input", source, *SAMPLING)
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"prompt": "x = 1", "completion": expected["x = 1"]}]


def test_fill_mask_prints_candidates_and_writes_them_as_jsonl(bert, tmp_path):
    shown = generate(bert, "The for statement is [MASK] to iterate", "--candidates", "3")
    assert shown.exit_code == 0, shown.output
    assert "probability" in shown.stdout and "The for statement is" in shown.stdout
    source = tmp_path / "masked.jsonl"
    source.write_text(json.dumps({"text": "A [MASK] is an [MASK]", "n": 1}) + "\n")
    out = tmp_path / "filled.jsonl"
    assert generate(bert, "--input", source, "-o", out, "--candidates", "3").exit_code == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["n"] == 1 and len(record["candidates"]) == 2 and all(len(c) == 3 for c in record["candidates"])
    assert set(record["candidates"][0][0]) == {"token", "id", "probability", "text"}


def test_a_classifier_labels_each_line(labeler, tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text("Return the sum.\n\nA class for lists\nRegular expressions\n")
    out = tmp_path / "labels.jsonl"
    result = generate(labeler, "--prompt-file", lines, "-o", out, "--temperature", "0.5")
    assert result.exit_code == 0, result.output
    assert "--temperature: no effect on a classify checkpoint" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in records] == ["Return the sum.", "A class for lists", "Regular expressions"]
    for record in records:
        assert record["label"] in checkpoints.LABELS and set(record["probabilities"]) == set(checkpoints.LABELS)
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
    table = generate(labeler, "Return the sum.")
    assert table.exit_code == 0 and records[0]["label"] in table.stdout


def test_a_second_text_is_refused_unless_the_classifier_reads_pairs(labeler, gpt, tmp_path):
    result = generate(labeler, "Return the sum.", "--text-pair", "A function.")
    assert result.exit_code == 1
    assert f"error: --text-pair: {labeler} classifies single texts (it was not finetuned on pairs)" in result.stderr
    result = generate(gpt, "x", "--text-pair", "y")
    assert f"error: --text-pair: {gpt} is a text model, not a classifier" in result.stderr
    records = write_lines(tmp_path / "in.jsonl", json.dumps({"text": "a", "text_pair": "b"}))
    result = generate(labeler, "--input", records)
    assert result.exit_code == 1 and (f'error: {records}:1: has a "text_pair" field, but the classifier reads single '
                                      "texts") in result.stderr
    assert "error: --text-pair: is the second text of PROMPT" in generate(labeler, "--text-pair", "y").stderr


def test_interactive_mode_answers_each_line(gpt, expected):
    result = invoke_lmkit("generate", str(gpt), "--interactive", *SAMPLING,
                          input="The for statement\n\nx = 1\nexit\nnot read\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected["The for statement"] + "\n" + expected["x = 1"] + "\n"


def test_a_long_prompt_is_cut_with_a_warning_or_refused(gpt):
    long_prompt = "word " * 300
    cut = generate(gpt, long_prompt, "--max-new-tokens", "2")
    assert cut.exit_code == 0, cut.output
    assert "PROMPT: " in cut.stderr and "kept its last 127 tokens" in cut.stderr
    refused = generate(gpt, long_prompt, "--truncate", "error")
    assert refused.exit_code == 1 and "more than the model's context allows" in refused.stderr


def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


BAD_FLAGS = [
    (["--top-p", "0"], "--top-p: must be in (0, 1] (1 = off), got 0.0"),
    (["--top-p", "1.5"], "--top-p: must be in (0, 1]"),
    (["--temperature", "-0.5"], "--temperature: must be 0 (greedy) or positive, got -0.5"),
    (["--top-k", "-3"], "--top-k: must be 0 (off) or positive, got -3"),
    (["--min-p", "2"], "--min-p: must be in [0, 1]"),
    (["--repetition-penalty", "0"], "--repetition-penalty: must be positive"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be at least 1"),
    (["--num-samples", "3", "--temperature", "0"], "--num-samples 3 with --temperature 0: greedy decoding gives"),
    (["--stop", "a,,b"], "--stop: empty stop string"),
    (["--stop", "\\q"], "--stop: unknown escape '\\q'"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--precision", "fp8"], "--precision: 'fp8' is not one of fp32, bf16"),
    (["--quantize", "int4"], "--quantize: 'int4' is not one of none, int8"),
    (["--truncate", "right"], "--truncate: 'right' is not one of left, error"),
    (["--interactive"], "--interactive and PROMPT: interactive mode reads the prompts from the terminal"),
    (["--input", "x.jsonl"], "PROMPT and --input: give the prompts one way only"),
    (["--force"], "--force: only applies to --output"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_refused_with_one_line_each(gpt, flags, message):
    result = generate(gpt, "hello", *flags)
    assert result.exit_code == 1, result.output
    assert f"error: {message}" in result.stderr
    assert result.stdout == ""


def test_several_bad_values_are_reported_together(gpt):
    result = generate(gpt, "hello", "--top-p", "0", "--temperature", "-1", "--top-k", "-1")
    assert result.exit_code == 1 and result.stderr.count("error: ") == 3


def test_bad_inputs_are_refused_naming_the_file_and_line(gpt, bert, dataset, tmp_path):
    cases = [
        ([gpt, "--input", tmp_path / "missing.jsonl"], "missing.jsonl: no such file"),
        ([gpt, "--input", write_lines(tmp_path / "a.jsonl", '{"prompt": "ok"}', "{oops")],
         "a.jsonl:2: not valid JSON"),
        ([gpt, "--input", write_lines(tmp_path / "b.jsonl", '{"prompt": "ok"}', '{"text": 3}')],
         'b.jsonl:2: needs a "prompt" field holding a string'),
        ([gpt, "--input", write_lines(tmp_path / "c.jsonl", '["prompt"]')], "c.jsonl:1: expected a JSON object"),
        ([gpt, "--input", write_lines(tmp_path / "d.jsonl", '{"prompt": "ok"}', '{"prompt": "  "}')],
         "d.jsonl:2: the prompt is empty"),
        ([gpt, "--input", write_lines(tmp_path / "e.jsonl")], "e.jsonl: no prompts in it"),
        ([gpt, "--prompt-file", write_lines(tmp_path / "empty.txt", "")], "empty.txt: the prompt is empty"),
        ([gpt, "hi", "-o", tmp_path / "no" / "such" / "dir.jsonl"], "the directory"),
        ([gpt, "hi", "-o", tmp_path], "is a directory; give a file name"),
        ([bert, "no mask in this text"], "PROMPT: no [MASK] in the text"),
        ([dataset, "hello"], "is a dataset artifact, expected a checkpoint"),
        ([tmp_path / "nothing", "hello"], "no such artifact directory"),
    ]
    for args, message in cases:
        result = generate(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr, (message, result.stderr)
    assert not (tmp_path / "no").exists()


def test_an_empty_prompt_on_stdin_is_refused(gpt):
    result = invoke_lmkit("generate", str(gpt), input="")
    assert result.returncode == 1 and "error: stdin: the prompt is empty" in result.stderr


def test_a_checkpoint_of_an_unknown_kind_is_refused(gpt, tmp_path):
    checkpoint = read_checkpoint(gpt)
    odd = checkpoints.write_model(tmp_path / "odd", checkpoint.build_model(), checkpoint.model_config, "distill",
                                  gpt / "tokenizer")
    result = generate(odd, "hello")
    assert result.exit_code == 1
    assert "objective 'distill' is not a kind generate knows" in result.stderr


def test_cuda_is_refused_where_there_is_none(gpt):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = generate(gpt, "hello", "--device", "cuda")
    assert result.exit_code == 1 and "CUDA is not available on this machine" in result.stderr


def test_print_config_round_trips(gpt, tmp_path):
    printed = generate(gpt, "--print-config", "--top-k", "40", "--stop", "\\n\\n")
    assert printed.exit_code == 0 and "top_k = 40" in printed.stdout
    config_file = tmp_path / "generate.toml"
    config_file.write_text(printed.stdout)
    assert generate("--config", config_file, "--print-config").stdout == printed.stdout


def test_the_flags_choices_are_the_library_s_and_parsing_them_needs_no_torch():
    import subprocess
    import sys

    from lmkit.generation import generator, model, quantize
    from lmkit.stages import generate_config

    assert generate_config.PRECISIONS == tuple(model.PRECISIONS)
    assert generate_config.QUANTIZATIONS == ("none", *quantize.QUANTIZATIONS)
    assert generate_config.TRUNCATIONS == generator.TRUNCATIONS
    probe = "import sys, lmkit.cli.generate, lmkit.generation; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
