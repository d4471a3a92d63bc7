"""Conversation records: both layouts read alike, every bad record refused naming its file, line and turn (or
skipped and counted), and the tokens a model trains on: the assistant's turns with their end of turn, tokenized
as generation will tokenize the conversation's prompt (axolotl #834, nanochat #291)."""

import json

import pytest

from lmkit import artifacts
from lmkit.data import conversations
from lmkit.data.chat_template import CHAT_TOKENS, DEFAULT_TEMPLATE, ChatFormat
from lmkit.errors import UserError
from lmkit.tokenizer import load as load_tokenizer
from lmkit.tokenizer import with_added_tokens
from lmkit.vocab import IGNORE_INDEX
from tests.interop.hf_models import QWEN_TEMPLATE
from tests.interop.hf_models import conversations as sample_conversations

OPENAI = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                       {"role": "assistant", "content": [{"type": "text", "text": "See "}, {"type": "text",
                                                                                          "text": "you."}]}]}
SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                              {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Bye"},
                              {"from": "gpt", "value": "See you."}]}


@pytest.fixture(scope="module")
def chat_tokenizer(dataset, tmp_path_factory):
    """lmkit's SentencePiece tokenizer of the test dataset with the chat tokens added."""
    tokenizer = artifacts.load(dataset / "tokenizer", kind="tokenizer")
    return load_tokenizer(with_added_tokens(tokenizer, list(CHAT_TOKENS), tmp_path_factory.mktemp("tok") / "t").path)


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    pytest.importorskip("transformers")
    from lmkit.config import resolve
    from lmkit.interop import import_stage
    from lmkit.interop.import_config import ImportConfig
    from tests.interop.hf_models import make_chat_model

    root = tmp_path_factory.mktemp("qwen")
    source = make_chat_model("qwen2", root / "hf")
    imported = import_stage.run(resolve(ImportConfig, {}, {"source": str(source), "out": str(root / "ckpt")}))
    return load_tokenizer(imported.path / "tokenizer")


def test_openai_and_sharegpt_layouts_read_alike():
    ours = conversations.parse(OPENAI, "a.jsonl:1")
    assert ours.messages == conversations.parse(SHAREGPT, "a.jsonl:1").messages
    assert ours.messages[-1] == {"role": "assistant", "content": "See you."}


@pytest.mark.parametrize("record,message", [
    ({"text": "hi"}, r'x.jsonl:3: no conversation: expected an OpenAI "messages" list'),
    ({"messages": []}, "x.jsonl:3: the conversation is empty"),
    ({"messages": ["hi"]}, r'x.jsonl:3: turn 1: expected an object with "role" and "content"'),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}]},
     r"x.jsonl:3: turn 2: unknown role 'tool'; \"role\" must be one of system, user, assistant \(tool turns"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hey"}]},
     r"x.jsonl:3: turn 2: unknown role 'bot'; \"from\" must be one of system, human, user, gpt, assistant$"),
    ({"messages": [{"content": "Hi"}]}, r"x.jsonl:3: turn 1: no role"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
     "x.jsonl:3: turn 2: empty assistant turn"),
    ({"messages": [{"role": "user", "content": 7}]}, r'x.jsonl:3: turn 1: "content" must be a string'),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief."},
                   {"role": "assistant", "content": "Hey"}]},
     r"x.jsonl:3: turn 2: a system turn after the conversation started"),
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
     "x.jsonl:3: no assistant turn: nothing for the model to learn"),
])
def test_each_bad_record_is_refused_naming_file_line_and_turn(record, message):
    with pytest.raises(conversations.BadConversation, match=message):
        conversations.parse(record, "x.jsonl:3")


def test_a_conversation_to_answer_must_end_with_the_users_turn():
    assert conversations.parse({"messages": [{"role": "user", "content": "Hi"}]}, "x", needs_reply=False)
    with pytest.raises(UserError, match=r"x: turn 2: the conversation must end with the user's turn, for the model "
                                        r"to answer \(it ends with the assistant's turn\)"):
        conversations.parse({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "H"}]},
                            "x", needs_reply=False)


def test_a_file_stops_at_its_first_bad_record_or_skips_and_counts_them(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join([json.dumps(OPENAI), "{not json", json.dumps({"messages": [{"role": "user",
                                                                                          "content": "Hi"}]}),
                               "", json.dumps(SHAREGPT)]) + "\n")
    with pytest.raises(UserError, match=r"chats.jsonl:2: not valid JSON .*; --skip-bad-records"):
        conversations.read(path, hint="; --skip-bad-records skips such records")
    skipped = conversations.Skipped()
    found = conversations.read(path, skip_bad=True, skipped=skipped)
    assert [c.where for c in found] == [f"{path}:1", f"{path}:5"]
    assert skipped.count == 2 and skipped.first.startswith(f"{path}:2: not valid JSON")
    path.write_text("{not json\n")
    with pytest.raises(UserError, match=r"chats.jsonl: no conversations \(1 bad records skipped"):
        conversations.read(path, skip_bad=True)


def test_looks_like_conversations(tmp_path):
    path = tmp_path / "a.jsonl"
    for record, expected in ((OPENAI, True), (SHAREGPT, True), ({"prompt": "x", "response": "y"}, False)):
        path.write_text(json.dumps(record) + "\n")
        assert conversations.looks_like_conversations(path) is expected


def test_the_assistant_turns_and_their_end_of_turn_are_the_trained_tokens(chat_tokenizer):
    chat = ChatFormat(DEFAULT_TEMPLATE)
    conversation = conversations.parse(OPENAI, "x")
    example = conversations.tokenize(conversation, chat, chat_tokenizer)
    end = chat_tokenizer.token_id("<|im_end|>")
    trained = [token for token, keep in zip(example.tokens, example.trained, strict=True) if keep]
    assert chat_tokenizer.decode(trained) == "Hello.<|im_end|>See you.<|im_end|>"
    assert trained.count(end) == 2 and example.tokens.count(end) == 5  # system and user turns end too, untrained
    targets = example.targets()
    assert len(targets) == len(example.tokens) - 1
    assert [t for t in targets if t != IGNORE_INDEX] == trained
    last = conversations.tokenize(conversation, chat, chat_tokenizer, last_turn_only=True)
    assert chat_tokenizer.decode([t for t, keep in zip(last.tokens, last.trained, strict=True) if keep]) == \
        "See you.<|im_end|>"
    assert last.tokens == example.tokens


@pytest.mark.parametrize("which", ["lmkit", "qwen"])
def test_training_tokens_before_each_reply_are_the_prompt_generation_reads(which, chat_tokenizer, qwen_tokenizer):
    """The tokens a model learns each reply after are exactly those it will be given to write that reply."""
    tokenizer = chat_tokenizer if which == "lmkit" else qwen_tokenizer
    chat = ChatFormat(DEFAULT_TEMPLATE if which == "lmkit" else QWEN_TEMPLATE)
    checked = 0
    for number, messages in enumerate(sample_conversations(20, seed=7)):
        if messages[-1]["role"] != "assistant":
            continue
        example = conversations.tokenize(conversations.Conversation(tuple(messages), f"c{number}"), chat, tokenizer)
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = conversations.prompt_ids(messages[:turn], chat, tokenizer, "x")
            assert example.tokens[:len(prompt)] == prompt
            assert not example.trained[len(prompt) - 1] and example.trained[len(prompt)]  # the reply starts there
            checked += 1
    assert checked >= 10


def test_the_end_of_turn_is_found_in_the_template(chat_tokenizer, qwen_tokenizer):
    assert conversations.end_of_turn(ChatFormat(DEFAULT_TEMPLATE), chat_tokenizer, "x") == \
        chat_tokenizer.token_id("<|im_end|>")
    assert conversations.end_of_turn(ChatFormat(QWEN_TEMPLATE), qwen_tokenizer, "x") == \
        qwen_tokenizer.token_id("<|im_end|>")
    eos = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert conversations.end_of_turn(ChatFormat(eos, {"eos_token": "</s>"}), chat_tokenizer, "x") == 3
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert conversations.end_of_turn(ChatFormat(plain), chat_tokenizer, "x") is None
