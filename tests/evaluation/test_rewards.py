"""Rewards scored on examples, the --reward grammar and its refusals, and the unbiased pass@k estimator against a
direct count over every k-subset of the samples."""

import itertools
import math

import pytest

from lmkit.errors import UserError
from lmkit.evaluation.rewards import Reward, code_files, last_number, pass_at_k


def score(spec, reply, record=None, tokens=1, where="data.jsonl:3"):
    return Reward(spec).score("What is 2 + 2?", reply, record or {}, tokens, where)


@pytest.mark.parametrize("reply, answer, expected", [
    ("Paris", "paris", 1.0), ("  The   Answer. ", "the answer", 1.0), ("Paris!", "Paris", 1.0),
    ("Lyon", "Paris", 0.0), ("Paris is it", "Paris", 0.0), ("4", 4, 1.0), ("b", ["a", "b"], 1.0),
])
def test_exact_compares_normalized_text(reply, answer, expected):
    assert score("exact", reply, {"answer": answer}).value == expected


@pytest.mark.parametrize("reply, answer, expected", [
    ("The sum is 85.", "85", 1.0), ("84, no: 85", 85, 1.0), ("85 or 84", "85", 0.0), ("1,234.50", "1234.5", 1.0),
    ("-3", "#### -3", 1.0), ("no number", "85", 0.0), ("85.0", 85, 1.0), ("3", 3.5, 0.0),
])
def test_number_compares_the_last_number(reply, answer, expected):
    assert score("number", reply, {"answer": answer}).value == expected


def test_last_number_reads_separators_and_signs():
    assert last_number("a 1,000 b -2.5") == last_number("-2.50")
    assert last_number("none") is None


def test_json_scores_replies_that_parse():
    assert score("json", '{"a": [1, 2]}').value == 1.0
    assert score("json", " 3 ").value == 1.0
    assert score("json", "{a: 1}").value == 0.0


def test_regex_extracts_its_group_or_match_and_takes_the_rest_of_the_spec():
    assert score("regex:answer: (\\d+)", "answer: 12 apples", {"answer": "12"}).value == 1.0
    assert score("regex:answer: (\\d+)", "answer: 13", {"answer": "12"}).value == 0.0
    assert score("regex:\\d+", "it is 12", {"answer": "12"}).value == 1.0   # no group: the whole match
    assert score("regex:^[A-Z]+$", "YES").value == 1.0                      # no answer: a match passes
    assert score("regex:^[A-Z]+$", "yes").value == 0.0
    both = Reward("length:4+regex:(\\d+)+")  # the pattern holds "+": it is the last term and takes the rest
    assert [t.text for t in both.terms] == ["length:4", "regex:(\\d+)+"]


def test_length_penalty_combines_and_never_fails_a_correct_reply():
    assert score("length:10", "x", tokens=10).value == 0.0
    assert score("length:10", "x", tokens=15).value == pytest.approx(-0.5)
    long_right = score("number+length:10", "85", {"answer": 85}, tokens=15)
    assert long_right.value == pytest.approx(0.5) and long_right.passed
    short_wrong = score("number+length:10", "84", {"answer": 85}, tokens=3)
    assert short_wrong.value == 0.0 and not short_wrong.passed


def test_a_user_function_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def shorter(prompt, reply, record):\n"
                                            "    return 1.0 if len(reply) < len(prompt) else -1\n"
                                            "def says_yes(prompt, reply, record):\n    return reply == 'yes'\n")
    assert score(f"{tmp_path / 'my_rewards.py'}:shorter", "4").value == 1.0
    assert score(f"{tmp_path / 'my_rewards.py'}:shorter", "x" * 40).value == -1.0
    monkeypatch.syspath_prepend(str(tmp_path))
    assert score("my_rewards:says_yes", "yes") == score("my_rewards:says_yes", "yes")
    assert score("my_rewards:says_yes", "yes").value == 1.0 and score("my_rewards:says_yes", "no").value == 0.0


def test_the_source_of_a_users_reward_is_named_for_the_runs_identity(tmp_path, monkeypatch):
    (tmp_path / "grader_module.py").write_text("def f(prompt, reply, record):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = f"number+grader_module:f+{tmp_path / 'other.py'}:g+length:8"
    assert code_files(spec) == [str(tmp_path / "grader_module.py"), str(tmp_path / "other.py")]
    # built-in terms, a built-in module and a regex (whose pattern may hold a colon) name no file
    assert code_files("exact+json+math:sqrt+regex:(\\d+):") == []


@pytest.mark.parametrize("body, message", [
    ("def f(prompt, reply, record):\n    raise KeyError('gold')\n",
     "--reward {spec}: raised KeyError: 'gold' on the prompt at data.jsonl:3"),
    ("def f(prompt, reply, record):\n    return float('nan')\n",
     "--reward {spec}: returned nan for the prompt at data.jsonl:3; a reward must be a finite number"),
    ("def f(prompt, reply, record):\n    return 'good'\n",
     "--reward {spec}: returned 'good' for the prompt at data.jsonl:3; a reward must be a finite number"),
    ("def f(prompt, reply, record):\n    return None\n",
     "--reward {spec}: returned None for the prompt at data.jsonl:3; a reward must be a finite number"),
], ids=["raises", "nan", "str", "none"])
def test_a_user_function_that_fails_is_named_with_the_prompt(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text(body)
    spec = f"{path}:f"
    with pytest.raises(UserError) as caught:
        score(spec, "4")
    assert str(caught.value) == message.format(spec=spec)


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule_xyz:f", "--reward nosuchmodule_xyz:f: cannot import nosuchmodule_xyz (ModuleNotFoundError"),
    ("missing.py:f", "--reward missing.py:f: missing.py: no such file"),
    ("math:nosuch", "--reward math:nosuch: math has no function 'nosuch'"),
    ("exactly", "--reward exactly: not a reward; use one of exact, number, json, regex:PATTERN, length:N"),
    ("number++exact", "--reward number++exact: an empty term"),
    ("length:0", "--reward length:0: N must be a positive whole number"),
    ("regex:(", "--reward regex:(: not a regular expression"),
])
def test_bad_reward_specs_are_refused_in_one_line(spec, message):
    with pytest.raises(UserError) as caught:
        Reward(spec)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_an_unimportable_file_is_refused_with_its_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import nosuchpackage_xyz\n")
    with pytest.raises(UserError, match=r"cannot import .*broken.py \(ModuleNotFoundError: No module named"):
        Reward(f"{path}:f")


def test_records_without_what_the_reward_compares_with_are_refused():
    Reward("json").check_record({}, "f.jsonl:1")  # needs no answer
    Reward("regex:x").check_record({}, "f.jsonl:1")
    with pytest.raises(UserError, match="f.jsonl:2: no 'answer' field, which --reward number compares"):
        Reward("number+length:8").check_record({"prompt": "p"}, "f.jsonl:2")
    with pytest.raises(UserError, match="f.jsonl:4: the answer 'many' holds no number"):
        Reward("number").check_record({"answer": "many"}, "f.jsonl:4")
    Reward("exact", answer_field="gold").check_record({"gold": "x"}, "f.jsonl:5")


def brute_force_pass_at_k(n, c, k):
    """The share of k-subsets of n samples (c of which pass) holding at least one pass."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_is_the_unbiased_estimator(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(n, 0, 1) == 0.0 and pass_at_k(n, n, 1) == 1.0


def test_pass_at_k_refuses_more_than_the_samples():
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
