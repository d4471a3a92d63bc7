"""``evaluate --task pass-at-k`` on tiny text and chat models: the report's pass@k against the per-prompt counts it
wrote, seeded sampling, --fail-if on its metrics, and its refusals."""

import itertools
import json

import pytest

from tests.conftest import invoke_lmkit


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """Prompts without answers: --reward regex passes a reply that matches."""
    path = tmp_path_factory.mktemp("pass-at-k") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"The {word} of the", "answer": str(i)}) + "\n"
                            for i, word in enumerate(("value", "name", "type", "list", "module", "class"))))
    return path


def evaluate(checkpoint, data, *flags, out=None):
    args = ["evaluate", str(checkpoint), str(data), "--task", "pass-at-k", "--max-new-tokens", "5", *flags]
    return invoke_lmkit(*args, *(["--out", str(out)] if out else []))


def pass_at_k_by_count(n, c, k):
    """The share of the k-subsets of n replies (c passing) that hold a passing one."""
    passing = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(passing[i] for i in subset) for subset in subsets) / len(subsets)


def test_pass_at_k_reports_the_unbiased_estimate_of_its_samples(gpt, prompts, tmp_path):
    flags = ["--reward", "regex:[aeiou]", "--answer-field", "none", "--samples", "4", "--k", "1,2,4", "--seed", "3"]
    result = evaluate(gpt, prompts, *flags, out=tmp_path / "report")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    metrics = report["metrics"]
    assert set(metrics) == {"pass_at_1", "pass_at_2", "pass_at_4", "mean_reward", "greedy_pass_rate"}
    rows = [json.loads(line) for line in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(row["replies"]) == 4 for row in rows)
    for k in (1, 2, 4):
        expected = sum(pass_at_k_by_count(4, row["passed"], k) for row in rows) / len(rows)
        assert metrics[f"pass_at_{k}"] == pytest.approx(expected)
    assert metrics["mean_reward"] == pytest.approx(sum(sum(row["rewards"]) for row in rows) / 24)
    assert 0 < metrics["pass_at_1"] < 1  # the samples differ: the check is not vacuous
    assert metrics["pass_at_1"] <= metrics["pass_at_2"] <= metrics["pass_at_4"]
    assert evaluate(gpt, prompts, *flags, out=tmp_path / "again").returncode == 0
    assert json.loads((tmp_path / "again" / "report.json").read_text())["metrics"] == metrics  # seeded
    assert evaluate(gpt, prompts, *flags[:-1], "4", out=tmp_path / "other").returncode == 0  # another --seed
    assert json.loads((tmp_path / "other" / "predictions.jsonl").read_text().splitlines()[0])["replies"] != \
        rows[0]["replies"]


def test_its_metrics_gate_a_ci_run(gpt, prompts):
    flags = ["--reward", "regex:[aeiou]", "--answer-field", "none", "--samples", "2"]
    assert evaluate(gpt, prompts, *flags, "--fail-if", "pass_at_2>1").returncode == 0
    failed = evaluate(gpt, prompts, *flags, "--fail-if", "pass_at_2<=1")
    assert failed.returncode == 3 and "pass_at_2<=1" in failed.stderr
    unknown = evaluate(gpt, prompts, *flags, "--fail-if", "pass_at_8<0.5")
    assert unknown.returncode == 1 and "pass_at_8" in unknown.stderr


def test_a_chat_model_answers_conversations(chat_model, tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"My colour is {word}."},
                                                     {"role": "assistant", "content": "Noted."},
                                                     {"role": "user", "content": "Which colour?"}],
                                        "answer": word}) + "\n" for word in ("red", "blue", "green")))
    result = evaluate(chat_model, path, "--reward", "exact", "--samples", "2", "--k", "1", out=tmp_path / "report")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["metrics"]) == {"pass_at_1", "mean_reward", "greedy_pass_rate"}


def refusal(result):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0].removeprefix("error: ")


def test_bad_inputs_are_refused_in_one_line(gpt, prompts, tmp_path):
    assert "--k 5: must be between 1 and --samples 4" in refusal(evaluate(gpt, prompts, "--samples", "4", "--k", "5"))
    assert "--k: 1,x: whole numbers" in refusal(evaluate(gpt, prompts, "--k", "1,x"))
    assert refusal(evaluate(gpt, prompts, "--reward", "nosuch_xyz:f")).startswith(
        "--reward nosuch_xyz:f: cannot import nosuch_xyz")
    no_answer = tmp_path / "no-answer.jsonl"
    no_answer.write_text(json.dumps({"prompt": "The value"}) + "\n")
    assert refusal(evaluate(gpt, no_answer, "--reward", "number")) == (
        f"{no_answer}:1: no 'answer' field, which --reward number compares the reply with (see --answer-field)")
    assert "--samples: read by --task pass-at-k, not by --task generate" in refusal(invoke_lmkit(
        "evaluate", str(gpt), str(prompts), "--task", "generate", "--samples", "3"))
    assert not (tmp_path / "report").exists()
