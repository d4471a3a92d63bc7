"""Question-answering records: the layouts read, every refusal with its FILE:LINE, the first-sentence baseline's
answer, and the demo corpus's QA set."""

import json

import pytest

from lmkit.data.qa import first_sentence, looks_like_qa, read_qa
from lmkit.errors import UserError

CONTEXT = "Paris is the capital of France. It lies on the Seine."


def write(tmp_path, *records):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_every_layout_is_read(tmp_path):
    path = write(tmp_path,
                 {"id": "a", "question": "Capital?", "context": CONTEXT,
                  "answers": {"text": ["Paris", "Paris"], "answer_start": [0, 0]}},
                 "",
                 {"question": "River?", "context": CONTEXT, "answer": "Seine", "answer_start": 47},
                 {"question": "River?", "context": CONTEXT, "answers": [{"text": "the Seine", "answer_start": 43}]})
    first, second, third = read_qa(path)
    assert first.id == "a" and [a.text for a in first.answers] == ["Paris", "Paris"]
    assert second.id == f"{path}:3" and second.answers[0].start == 47 and second.answers[0].end == 52
    assert third.answers[0].text == "the Seine"
    assert looks_like_qa(path)
    assert len(read_qa(path, limit=2)) == 2
    assert [e.answers for e in read_qa(write(tmp_path, {"question": "q", "context": "c"}), with_answers=False)] == [()]


@pytest.mark.parametrize("record,message", [
    ({"question": "q", "context": CONTEXT, "answer": "Lyon", "answer_start": 0},
     "answer 'Lyon' does not match the context at answer_start 0 (found 'Pari')"),
    ({"question": "q", "context": CONTEXT, "answers": {"text": ["Seine"], "answer_start": [46]}},
     "answer 'Seine' does not match the context at answer_start 46 (found ' Sein')"),
    ({"context": CONTEXT, "answer": "Paris", "answer_start": 0}, "field 'question' is missing"),
    ({"question": "q", "answer": "Paris", "answer_start": 0}, "field 'context' is missing"),
    ({"question": "q", "context": CONTEXT}, "field 'answers' is missing"),
    ({"question": "q", "context": CONTEXT, "answer": "Paris"}, "field 'answer_start' is missing"),
    ({"question": "q", "context": CONTEXT, "answer": "Paris", "answer_start": 99}, "answer_start 99 of answer 'Paris' "
     "is not an offset in the context"),
    ({"question": "q", "context": CONTEXT, "answers": {"text": [], "answer_start": []}}, "no answer (SQuAD v2"),
    ({"question": "", "context": CONTEXT, "answer": "Paris", "answer_start": 0},
     "field 'question' must be a non-empty"),
    ({"question": "q", "context": CONTEXT, "answers": {"text": ["Paris"]}}, "needs lists 'text' and 'answer_start'"),
])
def test_bad_records_are_refused_with_their_line(tmp_path, record, message):
    good = {"question": "q", "context": CONTEXT, "answer": "Paris", "answer_start": 0}
    path = write(tmp_path, good, record)
    with pytest.raises(UserError) as caught:
        read_qa(path)
    assert str(caught.value).startswith(f"{path}:2: ") and message in str(caught.value)


def test_empty_and_non_json_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="no records"):
        read_qa(write(tmp_path, ""))
    with pytest.raises(UserError, match=r"qa.jsonl:1: not valid JSON"):
        read_qa(write(tmp_path, "{oops"))
    assert not looks_like_qa(write(tmp_path, {"prompt": "p", "response": "r"}))


def test_first_sentence():
    assert first_sentence("  Return a new\ndeque. More here.") == "Return a new\ndeque."
    assert first_sentence("No end here\n\nA second paragraph.") == "No end here"
    assert first_sentence("x = 3.5 is a number! yes") == "x = 3.5 is a number!"
    assert first_sentence("one line") == "one line"


def test_demo_questions_have_real_answers_mostly_after_the_first_sentence():
    from lmkit.data.demo import _docstrings, _stdlib_texts
    from lmkit.data.demo_qa import qa_records
    from lmkit.evaluation.squad import squad_scores

    records = _docstrings()
    stdlib = dict(list(_stdlib_texts({r["text"] for r in records}).items())[:20])
    train, test = qa_records(records, stdlib)
    assert qa_records(records, stdlib) == (train, test)  # deterministic
    assert len(test) > 50 and len(train) > len(test)
    assert not {r["context"] for r in test} & {r["context"] for r in train}  # test contexts are unseen
    for record in train + test:
        (text,), (start,) = record["answers"]["text"], record["answers"]["answer_start"]
        assert record["context"][start:start + len(text)] == text
    in_first = [r["answers"]["answer_start"][0] < len(first_sentence(r["context"])) for r in test]
    assert sum(in_first) < len(test) / 3
    scores, _ = squad_scores([first_sentence(r["context"]) for r in test], [r["answers"]["text"] for r in test])
    assert scores["exact_match"] < 0.05 and scores["f1"] < 0.2  # honest, and beatable
    assert {r["meta"]["kind"] for r in test} == {"cloze", "returns"}
