"""Preference records: every layout read alike (a text prompt, a conversation, TRL's conversational replies with an
implicit or explicit prompt), and every bad record refused in one line naming its file and line."""

import json

import pytest

from lmkit.data.preferences import looks_like_preferences, read_preferences
from lmkit.errors import UserError

USER = [{"role": "user", "content": "Hi?"}]
TURNS = [{"role": "system", "content": "Be brief."}, *USER]


def write(tmp_path, *records):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize("record, prompt", [
    ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}, "Hi?"),
    ({"messages": TURNS, "chosen": "Hello.", "rejected": "Go away."}, TURNS),
    ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"}],
      "chosen": "Hello.", "rejected": "Go away."}, TURNS),
    ({"prompt": TURNS, "chosen": [{"role": "assistant", "content": "Hello."}],  # TRL, explicit prompt
      "rejected": [{"role": "assistant", "content": "Go away."}]}, TURNS),
    ({"chosen": [*TURNS, {"role": "assistant", "content": "Hello."}],  # TRL, implicit prompt
      "rejected": [*TURNS, {"role": "assistant", "content": "Go away."}]}, TURNS),
    ({"prompt": "Hi?", "chosen": [*USER, {"role": "assistant", "content": "Hello."}],  # the same prompt twice
      "rejected": [*USER, {"role": "assistant", "content": "Go away."}]}, "Hi?"),
])
def test_every_layout_reads_as_the_same_pair(tmp_path, record, prompt):
    (pair,) = read_preferences(write(tmp_path, record))
    assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, "Hello.", "Go away.")
    assert pair.where.endswith("pairs.jsonl:1") and looks_like_preferences(record)


@pytest.mark.parametrize("line, message", [
    ({"prompt": "p", "chosen": "a"}, 'no "rejected" reply'),
    ({"prompt": "p", "rejected": "a"}, 'no "chosen" reply'),
    ({"prompt": "p", "chosen": "", "rejected": "a"}, '"chosen" is empty'),
    ({"prompt": "p", "chosen": "a", "rejected": []}, '"rejected" is empty'),
    ({"prompt": "p", "chosen": "same", "rejected": "same "}, '"chosen" and "rejected" are the same reply'),
    ('{"prompt": "p", "chosen": "a"', "not valid JSON"),
    ('["p", "a", "b"]', "expected a JSON object"),
    ({"chosen": "a", "rejected": "b"}, "no prompt"),
    ({"prompt": " ", "chosen": "a", "rejected": "b"}, '"prompt" is empty'),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, '"prompt" must be a text or a list of messages'),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, '"chosen" must be a text, or a list of messages'),
    ({"messages": [*USER, {"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
     "must end with the user's turn"),
    ({"chosen": [*USER, {"role": "assistant", "content": "a"}],
      "rejected": [*USER, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
     '"rejected" ends with the user\'s turn'),
    ({"prompt": "p", "chosen": "a", "rejected": [*USER]}, '"rejected": no assistant turn'),
    ({"chosen": [*USER, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "b"}]},
     "differ before their final reply"),
    ({"prompt": "Other?", "chosen": [*USER, {"role": "assistant", "content": "a"}],
      "rejected": [*USER, {"role": "assistant", "content": "b"}]}, "differ from the prompt"),
    ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "no prompt"),
    ({"prompt": "p", "chosen": [{"role": "robot", "content": "a"}], "rejected": "b"}, '"chosen": turn 1: unknown role'),
])
def test_bad_records_are_refused_in_one_line_naming_the_line(tmp_path, line, message):
    good = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
    path = write(tmp_path, good, line)
    with pytest.raises(UserError) as caught:
        read_preferences(path)
    said = str(caught.value)
    assert said.startswith(f"{path}:2: ") and message in said and "\n" not in said


def test_an_empty_file_and_the_limit(tmp_path):
    with pytest.raises(UserError, match="no preference records"):
        read_preferences(write(tmp_path, ""))
    records = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    assert [p.prompt for p in read_preferences(write(tmp_path, *records), limit=2)] == ["p0", "p1"]
    assert not looks_like_preferences({"prompt": "p", "response": "r"}) and not looks_like_preferences(None)
