"""Chat models in and out of lmkit, against transformers itself: an imported chat model's template, stop ids and
ids (apply_chat_template's, for 20 conversations with system prompts and several turns), its replies stopping at
its end of turn after chat finetuning, the export of lmkit's own chat model (its ids and assistant mask as
transformers computes them, its greedy replies), and a plain prompt framed as each imported family's own
tokenizer frames it, so that `lmkit generate` continues as transformers' greedy decoding does."""

import json

import pytest
import torch

from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.data import conversations
from lmkit.data.chat_template import render
from lmkit.generation.decode import STOP_EOS
from lmkit.generation.generator import Generator
from lmkit.generation.settings import SamplingSettings
from lmkit.interop import import_stage
from lmkit.interop.import_config import ImportConfig
from lmkit.stages import finetune, generate
from lmkit.stages.finetune_config import FinetuneConfig
from lmkit.stages.generate_config import GenerateConfig
from lmkit.tokenizer import Tokenizer
from tests.conftest import chat_records, paragraphs, run_lmkit
from tests.interop.hf_models import CHAT_STYLES, FAMILIES, make_chat_model, make_hf_model
from tests.interop.hf_models import conversations as sample_conversations

transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")


def import_dir(source, out, **overrides):
    return import_stage.run(resolve(ImportConfig, {}, {"source": str(source), "out": str(out), **overrides})).path


@pytest.fixture(scope="module")
def chat_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-chat")
    return {style: make_chat_model(style, root / style) for style in CHAT_STYLES}


@pytest.fixture(scope="module")
def imported_chats(chat_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported-chat")
    return {style: import_dir(source, root / style) for style, source in chat_dirs.items()}


@pytest.mark.parametrize("style", CHAT_STYLES)
def test_an_imported_chat_models_ids_equal_apply_chat_template(style, chat_dirs, imported_chats):
    checkpoint = read_checkpoint(imported_chats[style])
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(chat_dirs[style]))
    end = tokenizer.token_id(CHAT_STYLES[style][4])
    assert checkpoint.task == "chat" and checkpoint.chat.end_of_turn == end
    generation = json.loads((chat_dirs[style] / "generation_config.json").read_text())
    assert set(checkpoint.stop_ids) == {tokenizer.specials.eos, *generation["eos_token_id"]} and end in \
        checkpoint.stop_ids
    assert checkpoint.artifact.manifest["format_version"] == 2 and checkpoint.artifact.stats["chat"]
    compared = 0
    for messages in sample_conversations(20, seed=11):
        assert len(messages) >= 2 or messages[0]["role"] == "user"
        for prompt in (True, False):
            ours = tokenizer.encode_chat(render(checkpoint.chat, messages, prompt, "x"))
            assert ours == list(theirs.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True,
                                                           return_dict=False)), messages
            compared += 1
    assert compared == 40


@pytest.mark.parametrize("style", CHAT_STYLES)
def test_greedy_replies_of_an_imported_chat_model_equal_transformers(style, chat_dirs, imported_chats):
    checkpoint = read_checkpoint(imported_chats[style])
    generator = Generator(checkpoint)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(chat_dirs[style]), dtype=torch.float32).eval()
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(str(chat_dirs[style]))
    settings = SamplingSettings(temperature=0.0, max_new_tokens=10)
    compared = 0
    for messages in sample_conversations(12, seed=13):
        if messages[-1]["role"] != "user":
            messages = messages[:-1]
        ids, dropped, rendered = generator.encode_messages(messages)
        if dropped or len(ids) + settings.max_new_tokens > generator.block_size:
            continue  # the tiny model's context is 128 tokens
        compared += 1
        (reply,) = generator.generate_ids([ids], [rendered], settings, names=["x"])
        inputs = theirs_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)
        assert inputs["input_ids"][0].tolist() == ids
        new = model.generate(**inputs, do_sample=False, max_new_tokens=10)[0, len(ids):].tolist()
        stopped = bool(new) and new[-1] in checkpoint.stop_ids
        assert reply.ids == (new[:-1] if stopped else new)
        assert (reply.reason == STOP_EOS) == stopped
    assert compared >= 4


def test_an_imported_chat_model_finetuned_on_conversations_stops_at_its_end_of_turn(imported_chats, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_records(64)))
    values = {"base": str(imported_chats["qwen2"]), "data": str(data), "out": str(tmp_path / "run"), "max_steps": 40,
              "micro_batch": 8, "lr": 1e-2, "eval_every": 0, "precision": "fp32", "seq_len": 128,
              "system_prompt": "One word."}
    tuned = read_checkpoint(finetune.run(resolve(FinetuneConfig, {}, values)).checkpoint.path)
    base = read_checkpoint(imported_chats["qwen2"])
    assert tuned.chat.template == base.chat.template and tuned.stop_ids == base.stop_ids  # its own, nothing added
    assert tuned.model_config.vocab_size == base.model_config.vocab_size
    generator = Generator(tuned)
    questions = [r["messages"][:-1] for r in chat_records(12, seed=3)]
    replies = [generator.generate_ids([generator.encode_messages(q)[0]], ["x"], SamplingSettings(
        temperature=0.0, max_new_tokens=12), names=["x"])[0] for q in questions]
    assert sum(r.reason == STOP_EOS for r in replies) >= 10, [r.text for r in replies]
    # It is the end of turn that stops them: transformers on the export ends each reply with <|im_end|>.
    export = tmp_path / "hf"
    run_lmkit("export", str(tuned.path), "--format", "hf", "--out", str(export), check=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(export))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for question, reply in zip(questions[:4], replies, strict=False):
        inputs = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        new = model.generate(**inputs, do_sample=False, max_new_tokens=12)[0, inputs["input_ids"].shape[1]:].tolist()
        assert new == reply.ids + ([end] if reply.reason == STOP_EOS else [])


def test_a_chat_template_given_at_import_replaces_the_models_and_a_bad_one_is_refused(chat_dirs, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")
    path = import_dir(chat_dirs["qwen2"], tmp_path / "own", chat_template=str(template))
    checkpoint = read_checkpoint(path)
    assert checkpoint.chat.template == template.read_text()
    assert checkpoint.chat.end_of_turn == Tokenizer.from_artifact(checkpoint.tokenizer_path).token_id("<|im_end|>")
    template.write_text("{% for m in messages %}{{ m['content'] }")
    result = run_lmkit("import", str(chat_dirs["qwen2"]), "--out", str(tmp_path / "bad"), "--chat-template",
                       str(template))
    assert result.returncode == 1 and f"--chat-template {template}: not a valid chat template" in result.stderr
    assert not (tmp_path / "bad").exists()


def test_the_export_of_lmkits_chat_model_gives_its_ids_assistant_mask_and_replies(chat_model, tmp_path):
    checkpoint = read_checkpoint(chat_model)
    run_lmkit("export", str(chat_model), "--format", "hf", "--out", str(tmp_path / "hf"), check=True)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ours = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == list(checkpoint.stop_ids)
    info = json.loads((tmp_path / "hf" / "lmkit_export.json").read_text())
    assert info["chat"]["end_of_turn"] == checkpoint.chat.end_of_turn and info["chat"]["system_prompt"] == "Be brief."
    for number, messages in enumerate(sample_conversations(20, seed=17)):
        prompt = messages[-1]["role"] == "user"
        want = ours.encode_chat(render(checkpoint.chat, checkpoint.chat.with_system(messages), prompt, "x"))
        got = theirs.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=not prompt)
        assert got["input_ids"] == want  # the default system prompt too, when the conversation has none
        if not prompt:  # transformers' assistant mask ({% generation %}) is lmkit's loss mask
            example = conversations.tokenize(conversations.Conversation(tuple(messages), f"c{number}"),
                                             checkpoint.chat, ours)
            assert got["assistant_masks"] == [int(t) for t in example.trained]


@pytest.fixture(scope="module")
def plain_models(tmp_path_factory):
    """Each imported causal family (tiny, random), and transformers' own copy of it."""
    root = tmp_path_factory.mktemp("families")
    found = {}
    for family in FAMILIES:
        if family == "bert":
            continue
        source = make_hf_model(family, root / family)
        found[family] = (source, import_dir(source, root / f"{family}-imported"))
    return found


PROMPTS = [text[:length] for text, length in zip(paragraphs(12), (9, 14, 20, 25, 31, 8, 17, 40, 12, 22, 33, 5),
                                                 strict=True)]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "bert"])
def test_lmkit_generate_continues_a_prompt_as_transformers_greedy_decoding(family, plain_models, tmp_path):
    source, imported = plain_models[family]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    config = resolve(GenerateConfig, {}, {"checkpoint": str(imported), "input": str(data), "temperature": 0.0,
                                          "max_new_tokens": 8, "device": "cpu"})
    records = generate.run(config).records
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    generator = Generator(read_checkpoint(imported))
    assert generator.own_framing
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos])
    for record, prompt in zip(records, PROMPTS, strict=True):
        framed = tokenizer(prompt)["input_ids"]  # transformers' default special-token handling
        assert generator.encode_prompt(prompt) == framed
        new = model.generate(torch.tensor([framed]), attention_mask=torch.ones(1, len(framed), dtype=torch.long),
                             do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id or 0
                             )[0, len(framed):].tolist()
        if new and new[-1] in stops:
            new = new[:-1]
        ours = generator.generate_ids([framed], [prompt], SamplingSettings(temperature=0.0, max_new_tokens=8),
                                      names=["x"])[0]
        assert ours.ids == new and record["completion"] == ours.text


def test_the_start_token_is_still_prepended_on_request(plain_models, chat_dirs, imported_chats):
    source, imported = plain_models["gpt2"]
    checkpoint = read_checkpoint(imported)
    prompt = PROMPTS[0]
    own, prepended = Generator(checkpoint), Generator(checkpoint, start_token=True)
    assert prepended.encode_prompt(prompt) == [checkpoint.specials.start, *own.encode_prompt(prompt)]
    assert Generator(checkpoint, start_token=False).encode_prompt(prompt) == own.encode_prompt(prompt)  # GPT-2: none
    # A tokenizer whose post-processor adds its <|begin_of_text|> (Llama 3's) frames a prompt with it.
    llama = read_checkpoint(imported_chats["llama3"])
    framed = transformers.AutoTokenizer.from_pretrained(str(chat_dirs["llama3"]))(prompt)["input_ids"]
    assert Generator(llama).encode_prompt(prompt) == framed and framed[0] == llama.specials.bos
    assert Generator(llama, start_token=False).encode_prompt(prompt) == framed[1:]


def test_chat_finetuning_of_an_imported_model_without_a_template_adds_lmkits_tokens(plain_models, tmp_path):
    """GPT-2 has no chat template: lmkit's ChatML is used, its tokens added to the model's own tokenizer.json (as
    transformers' add_special_tokens does), and the export reads conversations as lmkit does."""
    source, imported = plain_models["gpt2"]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}."},
                                                     {"role": "assistant", "content": w}]}) + "\n"
                            for w in ("red", "green", "blue", "grey") * 4))
    values = {"base": str(imported), "data": str(data), "out": str(tmp_path / "run"), "max_steps": 2,
              "micro_batch": 4, "eval_every": 0, "precision": "fp32", "seq_len": 63}
    tuned = read_checkpoint(finetune.run(resolve(FinetuneConfig, {}, values)).checkpoint.path)
    base = read_checkpoint(imported)
    tokenizer = Tokenizer.from_artifact(tuned.tokenizer_path)
    before = Tokenizer.from_artifact(base.tokenizer_path).vocab_size
    assert [tokenizer.token_id(t) for t in ("<|im_start|>", "<|im_end|>")] == [before, before + 1]
    assert set(tokenizer.specials.others) >= {before, before + 1}
    assert tuned.model_config.vocab_size >= before + 2 and tuned.chat.end_of_turn == before + 1
    run_lmkit("export", str(tuned.path), "--format", "hf", "--out", str(tmp_path / "hf"), check=True)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for messages in sample_conversations(5, seed=19):
        prompt = messages[-1]["role"] == "user"
        assert theirs.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True, return_dict=False) \
            == tokenizer.encode_chat(render(tuned.chat, messages, prompt, "x"))


def test_a_template_that_refuses_every_probe_is_said_not_compared(monkeypatch, tmp_path):
    class Refusing:
        def apply_chat_template(self, *args, **kwargs):
            raise ValueError("this template takes no system turn and no user turn")

    class Transformers:
        class AutoTokenizer:
            @staticmethod
            def from_pretrained(*args, **kwargs):
                return Refusing()

    said = []
    monkeypatch.setattr(import_stage.reporter, "warn", said.append)
    import_stage.check_chat(None, None, tmp_path, Transformers)
    assert said == [f"{tmp_path}: its chat template refused every probe conversation, so lmkit's rendering of it "
                    "could not be compared with transformers'"]
