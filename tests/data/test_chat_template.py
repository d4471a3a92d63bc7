"""Chat templates rendered as transformers renders them: lmkit's ChatML, published templates (Qwen2.5's, Llama 3's,
Mistral's) against transformers' apply_chat_template, the assistant's spans, and templates refused: a sandbox
escape, a template error, bad syntax, one that rewrites earlier turns, Jinja2 missing."""

import pytest

from lmkit.data.chat_template import (
    CHAT_TOKENS,
    DEFAULT_TEMPLATE,
    ChatFormat,
    assistant_spans,
    check_template,
    render,
)
from lmkit.errors import UserError
from tests.conftest import block_imports
from tests.interop.hf_models import LLAMA3_TEMPLATE, QWEN_TEMPLATE, conversations

transformers = pytest.importorskip("transformers")

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
VARIABLES = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A transformers tokenizer whose special tokens are VARIABLES' (apply_chat_template passes them)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **VARIABLES)


def test_the_default_template_is_chatml_with_the_assistant_turns_marked():
    chat = ChatFormat(DEFAULT_TEMPLATE)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert render(chat, messages, True, "x") == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
                                                 "<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
                                                 "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    text, spans = assistant_spans(chat, messages[:3], "x")
    assert [text[a:b] for a, b in spans] == ["Hello.<|im_end|>"]  # the reply and its end of turn, not the "\n"
    assert all(token in DEFAULT_TEMPLATE for token in CHAT_TOKENS)


@pytest.mark.parametrize("name,template", [("chatml", DEFAULT_TEMPLATE), ("qwen2.5", QWEN_TEMPLATE),
                                           ("llama3", LLAMA3_TEMPLATE)])
def test_renderings_equal_apply_chat_templates_for_20_conversations(name, template, hf_tokenizer):
    chat = ChatFormat(template, VARIABLES)
    for messages in conversations(20, seed=3):
        for prompt in (True, False):
            theirs = hf_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                      add_generation_prompt=prompt)
            assert render(chat, messages, prompt, "x") == theirs


def test_a_template_raising_an_exception_is_refused_as_transformers_refuses_it(hf_tokenizer):
    chat = ChatFormat(MISTRAL_TEMPLATE, VARIABLES)
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert render(chat, good, False, "x") == hf_tokenizer.apply_chat_template(
        good, chat_template=MISTRAL_TEMPLATE, tokenize=False) == "<s>[INST] Hi [/INST]Hello</s>"
    bad = [{"role": "system", "content": "Be brief."}, *good]
    with pytest.raises(UserError, match=r"^data.jsonl:4: the chat template refused the conversation \(Conversation "
                                        r"roles must alternate"):
        render(chat, bad, False, "data.jsonl:4")
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        hf_tokenizer.apply_chat_template(bad, chat_template=MISTRAL_TEMPLATE, tokenize=False)


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, QWEN_TEMPLATE, LLAMA3_TEMPLATE, MISTRAL_TEMPLATE])
def test_assistant_spans_hold_each_reply_and_its_end_of_turn(template):
    chat = ChatFormat(template, VARIABLES)
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."}]
    text, spans = assistant_spans(chat, messages, "x")
    assert text == render(chat, messages, False, "x")
    pieces = [text[a:b] for a, b in spans]
    assert all(piece.lstrip().startswith(reply) for piece, reply in zip(pieces, ("Blue.", "Green."), strict=True))
    assert all(piece.rstrip("\n").endswith(("<|im_end|>", "<|eot_id|>", "</s>")) for piece in pieces)
    for (start, _end), turn in zip(spans, (1, 3), strict=True):  # the text before a reply is the generation prompt's
        assert text[:start] == render(chat, messages[:turn], True, "x")


def test_generation_tags_give_the_spans_transformers_masks(hf_tokenizer):
    messages = conversations(1, seed=5)[0] + [{"role": "assistant", "content": "Fine."}]
    text, spans = assistant_spans(ChatFormat(DEFAULT_TEMPLATE, VARIABLES), messages, "x")
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template([messages], chat_template=DEFAULT_TEMPLATE,
                                              return_assistant_tokens_mask=True, **VARIABLES)
    assert rendered == [text] and indices == [spans]


@pytest.mark.parametrize("template,message", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "tried to reach outside its sandbox"),
    ("{{ messages.append({'role': 'user', 'content': 'x'}) }}", "tried to reach outside its sandbox"),
    ("{{ namespace(_x=1) }}", "tried to reach outside its sandbox"),
    ("{{ raise_exception('no system prompts here') }}", r"refused the conversation \(no system prompts here\)"),
])
def test_templates_reaching_outside_the_sandbox_or_raising_are_refused(template, message):
    with pytest.raises(UserError, match=message):
        render(ChatFormat(template), [{"role": "user", "content": "Hi"}], True, "model.json")


def test_a_template_that_is_not_jinja_is_refused_naming_where_it_comes_from():
    with pytest.raises(UserError, match=r"^chat.jinja: not a valid chat template \(.*template line 1\)"):
        check_template("{% for message in messages %}{{ message }", "chat.jinja")
    check_template(DEFAULT_TEMPLATE, "positive control")


def test_a_template_that_rewrites_earlier_turns_has_no_assistant_spans():
    # Renders only the last two turns: a later turn changes what the earlier ones rendered as.
    template = "{% for m in messages[-2:] %}{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(UserError, match=r"x:1: turn 2: the chat template does not render the conversation as its "
                                        r"turns one after another .* mark them with \{% generation %\} tags"):
        assistant_spans(ChatFormat(template), messages, "x:1")
    # positive control: two turns render as their sum (no generation prompt: the role is the reply's)
    assert assistant_spans(ChatFormat(template), messages[:2], "x:1")[1] == [(11, 27)]


def test_without_jinja2_the_extra_is_named(monkeypatch):
    from lmkit.data import chat_template

    chat_template._compiled.cache_clear()
    block_imports(monkeypatch, "jinja2")
    with pytest.raises(UserError, match=r"chat templates need jinja2: pip install 'lmkit\[chat\]'"):
        render(ChatFormat(DEFAULT_TEMPLATE), [{"role": "user", "content": "Hi"}], True, "x")
