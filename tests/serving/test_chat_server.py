"""``lmkit serve`` on a chat model, driven as users drive it: the openai client's conversations (greedy replies equal
to lmkit chat's and to transformers' on the export), streaming, bad conversations refused with a 400, plain
completions kept, and lm-evaluation-harness's local-chat-completions with apply_chat_template."""

import json

import pytest

from lmkit.checkpoint import read_checkpoint
from lmkit.generation.chat import ChatSession
from lmkit.generation.generator import Generator
from lmkit.generation.settings import SamplingSettings
from tests.conftest import chat_records, run_lmkit
from tests.serving.test_server import Server

openai = pytest.importorskip("openai")

CONVERSATIONS = [
    [{"role": "user", "content": "My colour is amber."}, {"role": "assistant", "content": "Noted."},
     {"role": "user", "content": "Which colour?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "My colour is violet."},
     {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "Which colour?"}],
    [{"role": "user", "content": "My colour is red."}],
]


@pytest.fixture(scope="module")
def chat_server(chat_model):
    server = Server(chat_model, "--max-tokens", "64")
    yield server
    server.stop()


def session_reply(chat_model, messages, max_new_tokens=12, **sampling) -> str:
    """What `lmkit chat` answers after the conversation's earlier turns (its ChatSession, in-process)."""
    session = ChatSession(Generator(read_checkpoint(chat_model)),
                          SamplingSettings(max_new_tokens=max_new_tokens, **{"temperature": 0.0, **sampling}))
    session.history = [m for m in messages[:-1] if m["role"] != "system"]
    if messages[0]["role"] == "system":
        session.system = messages[0]["content"]
    return session.reply(messages[-1]["content"])[0].text


def test_greedy_replies_equal_lmkit_chats_and_transformers_on_the_export(chat_server, chat_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    run_lmkit("export", str(chat_model), "--format", "hf", "--out", str(tmp_path / "hf"), check=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    client = chat_server.client()
    for messages in CONVERSATIONS:
        served = client.chat.completions.create(model="run", messages=messages, max_tokens=12, temperature=0)
        ours = session_reply(chat_model, messages)
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        new = model.generate(**inputs, do_sample=False, max_new_tokens=12)[0, inputs["input_ids"].shape[1]:]
        theirs = tokenizer.decode(new, skip_special_tokens=True)
        assert served.choices[0].message.content == ours == theirs, (messages, ours, theirs)
        stopped = new[-1].item() in model.generation_config.eos_token_id
        assert served.choices[0].finish_reason == ("stop" if stopped else "length")
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="run", messages=messages, max_tokens=12, temperature=0, stream=True))
        assert streamed == ours


def test_sampled_replies_are_seeded_as_lmkit_chat_samples_them(chat_server, chat_model):
    messages = CONVERSATIONS[0]
    served = chat_server.client().chat.completions.create(model="run", messages=messages, max_tokens=12,
                                                          temperature=1.0, seed=5)
    assert served.choices[0].message.content == session_reply(chat_model, messages, temperature=1.0, seed=5)


@pytest.mark.parametrize("messages,message", [
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
     "turn 2: the conversation must end with the user's turn"),
    ([{"role": "user", "content": " "}], "turn 1: empty user turn"),
    ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}],
     "turn 2: a system turn after the conversation started"),
    ([{"role": "tool", "content": "42"}], None),  # not a role the protocol knows
    ([{"role": "user", "content": "word " * 300}], "more than the model's context allows"),
])
def test_bad_conversations_are_400s_and_the_server_keeps_serving(chat_server, messages, message):
    status, body, _ = chat_server.request("POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 4})
    assert status == 400 and "error" in body, body
    if message is not None:
        assert message in body["error"]["message"]
    assert chat_server.request("GET", "/health")[0] == 200


def test_plain_completions_continue_text_on_a_chat_model(chat_server, chat_model):
    answer = chat_server.client().completions.create(model="run", prompt="The for statement", max_tokens=8,
                                                     temperature=0)
    expected = Generator(read_checkpoint(chat_model)).generate(["The for statement"],
                                                               SamplingSettings(temperature=0, max_new_tokens=8))
    assert answer.choices[0].text == expected[0]
    health = chat_server.request("GET", "/health")[1]
    assert health["kind"] == "chat"


def test_lm_eval_local_chat_completions_gets_lmkit_chats_replies(chat_server, chat_model, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lmkit.evaluation import harness

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = [{"question": r["messages"][-3]["content"], "answer": r["messages"][-1]["content"]}
            for r in chat_records(6, seed=9)]
    (tasks / "colours.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "tiny_colours.yaml").write_text(f"""task: tiny_colours
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tasks / "colours.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""")
    result = lm_eval.simple_evaluate(
        model="local-chat-completions", tasks=["tiny_colours"], task_manager=harness.task_manager(str(tasks)),
        apply_chat_template=True, log_samples=True, bootstrap_iters=0,
        model_args={"model": "run", "base_url": f"{chat_server.url}/v1/chat/completions", "num_concurrent": 1,
                    "max_retries": 1})
    samples = sorted(result["samples"]["tiny_colours"], key=lambda s: s["doc_id"])
    ours = [session_reply(chat_model, [{"role": "user", "content": d["question"]}], max_new_tokens=8,
                          stop=("\n",)) for d in docs]
    assert [s["resps"][0][0] for s in samples] == ours
    expected = sum(o.strip() == d["answer"] for o, d in zip(ours, docs, strict=True)) / len(docs)
    assert result["results"]["tiny_colours"]["exact_match,none"] == pytest.approx(expected)
