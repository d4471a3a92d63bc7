"""The chat kind end to end in-process: finetuning on conversations (lmkit's chat tokens added, the loss on the
assistant's tokens only, packing), every bad input refused before anything is written, the checkpoint's format,
evaluate (replies against references with a baseline, the loss on the assistant's tokens), generate --messages,
and a reply that stops at the end of its turn."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from lmkit import artifacts, tasks
from lmkit.artifacts import ArtifactError
from lmkit.checkpoint import read_checkpoint
from lmkit.cli import app
from lmkit.config import resolve
from lmkit.data import conversations
from lmkit.errors import UserError
from lmkit.generation.chat import ChatSession
from lmkit.generation.decode import STOP_EOS
from lmkit.generation.generator import Generator
from lmkit.generation.settings import SamplingSettings
from lmkit.stages import finetune
from lmkit.stages.finetune_config import FinetuneConfig
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import IGNORE_INDEX
from tests.conftest import chat_records

runner = CliRunner()
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=12)


def config(base, data, out, **overrides):
    values = {"base": str(base), "data": str(data), "out": str(out), "micro_batch": 8, "max_steps": 2,
              "eval_every": 0, "precision": "fp32", "seq_len": 128, **overrides}
    return resolve(FinetuneConfig, {}, values)


def questions(count=8, seed=1):
    """Held-out conversations up to the question (the reply is the colour of the first turn)."""
    return [{"messages": r["messages"][:-1]} for r in chat_records(count, seed=seed)]


def test_chat_finetuning_writes_a_chat_checkpoint_with_its_tokens_and_template(chat_model, gpt):
    checkpoint = read_checkpoint(chat_model)
    base = read_checkpoint(gpt)
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    assert checkpoint.task == "chat" and checkpoint.objective == "chat"
    assert tasks.for_checkpoint(checkpoint).name == "chat"
    assert tokenizer.added == ("<|im_start|>", "<|im_end|>")
    end = tokenizer.token_id("<|im_end|>")
    assert checkpoint.chat.end_of_turn == end and checkpoint.stop_ids == (3, end)
    assert checkpoint.chat.system == "Be brief." and "<|im_start|>" in checkpoint.chat.template
    assert checkpoint.model_config.vocab_size == base.model_config.vocab_size + 2 == tokenizer.vocab_size
    assert checkpoint.artifact.manifest["format_version"] == 2  # an older lmkit refuses it instead of misreading it
    assert artifacts.load(checkpoint.tokenizer_path, kind="tokenizer").manifest["format_version"] == 2
    assert base.artifact.manifest["format_version"] == 1  # and what it wrote before is read as it was
    shown = runner.invoke(app, ["info", str(chat_model)])
    assert shown.exit_code == 0 and "checkpoint (format 2)" in shown.stdout
    assert re.search(rf"chat\s+│ ChatML \(\d+ characters\), end of turn id {end}, stop ids \[3, {end}\]", shown.stdout)


def test_new_embedding_rows_start_at_the_mean_and_leave_the_old_logits_unchanged(gpt):
    base = read_checkpoint(gpt)
    state = base.inference_model().state_dict()
    old = base.model_config.vocab_size
    grown = finetune._grown_state(state, old + 2, range(old, old + 2))
    assert grown["tok_emb.weight"].shape[0] == old + 2
    mean = state["tok_emb.weight"].mean(dim=0)
    assert torch.equal(grown["tok_emb.weight"][old], mean) and torch.equal(grown["tok_emb.weight"][old + 1], mean)
    assert torch.equal(grown["tok_emb.weight"][:old], state["tok_emb.weight"])
    import dataclasses

    from lmkit.models import build_model

    model = build_model(dataclasses.replace(base.model_config, vocab_size=old + 2))
    model.load_state_dict(grown)
    idx = torch.randint(7, old, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.eval()(idx)[0][..., :old], base.inference_model()(idx)[0], atol=1e-6)


def test_the_loss_counts_the_assistant_tokens_and_packing_keeps_each_conversations_loss(gpt, tmp_path):
    chat_file = tmp_path / "short.jsonl"  # two exchanges of a few tokens: several fit one packed row
    chat_file.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Noted."}, {"role": "user", "content": w},
        {"role": "assistant", "content": w}]}) + "\n" for w in ("red", "blue", "green", "grey") * 6))
    planned = finetune.plan(config(gpt, chat_file, tmp_path / "run", pack=True), finetune.distributed.setup())
    built = planned.spec.build(planned.inputs)
    objective = built.objective
    tokenizer = Tokenizer.from_artifact(planned.inputs.tokenizer.path)
    examples = objective.train[:8]
    plain = objective.__class__(examples, [], objective.layout, 0, torch.device("cpu"), 0)._batch(examples)
    for row in range(len(examples)):
        wanted = [t for t in plain["targets"][row].tolist() if t != IGNORE_INDEX]
        text = tokenizer.decode(wanted)
        assert text.startswith("Noted.<|im_end|>") and text.endswith("<|im_end|>") and text.count("<|im_end|>") == 2
    packed = objective._batch(examples)
    assert packed["idx"].shape[0] < plain["idx"].shape[0] and "segments" in packed
    model = finetune._new_model(built, planned.options, read_checkpoint(gpt), planned.model_config,
                                range(planned.model_config.vocab_size - 2, planned.model_config.vocab_size)).eval()
    with torch.no_grad():
        assert float(objective.loss(model, packed)) == pytest.approx(float(objective.loss(model, plain)), abs=1e-5)
    assert built.extra["stop"] == [3, tokenizer.token_id("<|im_end|>")]
    last = finetune.plan(config(gpt, chat_file, tmp_path / "last", last_turn_only=True), finetune.distributed.setup())
    last_objective = last.spec.build(last.inputs).objective
    only = last_objective._batch(last_objective.train[:8])
    for row, example in zip(only["targets"].tolist(), last_objective.train[:8], strict=True):
        reply = tokenizer.decode([t for t in row if t != IGNORE_INDEX])
        assert reply == f"{example_reply(tokenizer, example)}<|im_end|>"


def example_reply(tokenizer, example) -> str:
    """The last assistant turn's text of a chat example (the colour)."""
    text = tokenizer.decode(example.tokens)
    return text.rsplit("<|im_start|>assistant\n", 1)[1].split("<|im_end|>")[0]


BAD = [
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Hey"}]},
     r"chats.jsonl:3: turn 2: unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Hey"}]},
     r"chats.jsonl:3: turn 1: empty user turn"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, r"chats.jsonl:3: no assistant turn"),
    ({"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Hey"}]},
     r"chats.jsonl:3: \d+ tokens, more than the window \(--seq-len 128\) holds"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_a_bad_conversation_is_refused_naming_file_line_and_turn_with_nothing_written(bad, message, gpt, tmp_path):
    data = tmp_path / "chats.jsonl"
    records = chat_records(10)
    records.insert(2, bad)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = runner.invoke(app, ["finetune", str(gpt), str(data), "--out", str(tmp_path / "run"), "--max-steps", "1",
                                 "--micro-batch", "2", "--seq-len", "128"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1] and re.search(message, errors[0])
    assert "--skip-bad-records skips such records" in result.stderr
    assert not (tmp_path / "run").exists()
    skipped = runner.invoke(app, ["finetune", str(gpt), str(data), "--out", str(tmp_path / "run"), "--max-steps",
                                  "1", "--micro-batch", "2", "--seq-len", "128", "--skip-bad-records",
                                  "--eval-every", "0"])
    assert skipped.exit_code == 0, skipped.output
    assert "1 bad conversations skipped (--skip-bad-records; the first: " in skipped.stderr
    assert read_checkpoint(tmp_path / "run" / "final").task == "chat"


def test_task_auto_reads_conversations_and_other_tasks_flags_are_refused(gpt, chat_file, instructions, tmp_path):
    planned = finetune.plan(config(gpt, chat_file, tmp_path / "auto"), finetune.distributed.setup())
    assert planned.spec.name == "chat"
    refused = runner.invoke(app, ["finetune", str(gpt), str(instructions), "--out", str(tmp_path / "a"),
                                  "--last-turn-only", "--system-prompt", "Hi"])
    assert refused.exit_code == 1
    assert "--system-prompt and --last-turn-only: read by --task chat, not by --task auto (sft for" in refused.stderr
    refused = runner.invoke(app, ["finetune", str(gpt), str(chat_file), "--out", str(tmp_path / "b"),
                                  "--template", "Q: {prompt}\nA: "])
    assert refused.exit_code == 1 and "--template: read by --task sft, not by --task auto (chat for" in refused.stderr
    refused = runner.invoke(app, ["finetune", str(gpt), str(chat_file), "--out", str(tmp_path / "c"),
                                  "--freeze", "embeddings"])
    assert refused.exit_code == 1
    assert "--freeze embeddings: --task chat adds tokens to the tokenizer" in refused.stderr


@pytest.mark.parametrize("template,message", [
    ("{% for m in messages %}{{ m['content'] }", r"--chat-template .*chat.jinja: not a valid chat template"),
    ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
     r"ends an assistant turn with no special token, so a reply could never stop"),
    ("{{ ''.__class__.__mro__ }}", r"tried to reach outside its sandbox"),
])
def test_a_chat_template_that_cannot_train_is_refused(template, message, gpt, chat_file, tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text(template)
    result = runner.invoke(app, ["finetune", str(gpt), str(chat_file), "--out", str(tmp_path / "run"),
                                 "--chat-template", str(path), "--max-steps", "1"])
    assert result.exit_code == 1 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "run").exists()


def test_a_custom_template_ending_turns_with_eos_trains_without_new_tokens(gpt, chat_file, tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
                    "{% if add_generation_prompt %}assistant: {% endif %}")
    result = finetune.run(config(gpt, chat_file, tmp_path / "run", chat_template=str(path)))
    checkpoint = read_checkpoint(result.checkpoint.path)
    assert checkpoint.chat.end_of_turn == 3 and checkpoint.stop_ids == (3,)
    assert checkpoint.model_config.vocab_size == read_checkpoint(gpt).model_config.vocab_size  # nothing added


def test_replies_stop_at_the_end_of_their_turn(chat_model):
    generator = Generator(read_checkpoint(chat_model))
    items = [q["messages"] for q in questions(16)]
    encoded = [generator.encode_messages(m)[0] for m in items]
    replies = generator.generate_ids(encoded, [str(i) for i in range(len(items))], GREEDY,
                                     names=[f"c{i}" for i in range(len(items))])
    stopped = sum(reply.reason == STOP_EOS for reply in replies) / len(replies)
    assert stopped >= 0.9, [r.text for r in replies]
    assert all(len(reply.ids) < GREEDY.max_new_tokens for reply in replies if reply.reason == STOP_EOS)


def test_the_end_of_turn_token_is_generated_though_it_is_special(chat_model):
    generator = Generator(read_checkpoint(chat_model))
    end = generator.chat.end_of_turn
    assert end in generator.tokenizer.specials.never_generated and end not in generator.banned
    assert generator.tokenizer.token_id("<|im_start|>") in generator.banned


def test_evaluate_replies_with_the_echo_baseline_and_the_assistants_loss(chat_model, tmp_path):
    data = tmp_path / "held-out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_records(12, seed=5)))
    result = runner.invoke(app, ["evaluate", str(chat_model), str(data), "--baseline", "--max-new-tokens", "12",
                                 "--precision", "fp32",
                                 "--metrics", "exact_match,stop_rate", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["task"] == "chat" and report["examples"] == 12
    generator = Generator(read_checkpoint(chat_model))
    expected = [generator.generate_ids([generator.encode_messages(r["messages"][:-1])[0]], ["x"], GREEDY,
                                       names=["x"])[0] for r in chat_records(12, seed=5)]
    gold = [r["messages"][-1]["content"] for r in chat_records(12, seed=5)]
    assert report["metrics"]["exact_match"] == pytest.approx(
        sum(e.text.strip() == g for e, g in zip(expected, gold, strict=True)) / 12)
    assert report["metrics"]["stop_rate"] == pytest.approx(sum(e.reason == STOP_EOS for e in expected) / 12)
    assert report["metrics"]["baseline_exact_match"] == 0.0  # echoing "Which colour?" is never the colour
    assert "baseline_stop_rate" not in report["metrics"]
    loss = runner.invoke(app, ["evaluate", str(chat_model), str(data), "--task", "chat-lm", "--precision", "fp32",
                               "--out",
                               str(tmp_path / "loss")])
    assert loss.exit_code == 0, loss.output
    scored = json.loads((tmp_path / "loss" / "report.json").read_text())["metrics"]
    checkpoint = read_checkpoint(chat_model)
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    model = checkpoint.inference_model()
    total, count = 0.0, 0
    for record in chat_records(12, seed=5):  # the same, computed with the model directly
        example = conversations.tokenize(conversations.parse(record, "x"), checkpoint.chat, tokenizer)
        with torch.no_grad():
            logits = model(torch.tensor([example.tokens[:-1]]))[0][0]
        targets = torch.tensor(example.targets())
        chosen = targets != IGNORE_INDEX
        total += float(torch.nn.functional.cross_entropy(logits[chosen], targets[chosen], reduction="sum"))
        count += int(chosen.sum())
    assert scored["loss"] == pytest.approx(total / count, rel=1e-5)


def test_evaluate_refuses_a_chat_task_on_a_text_model(gpt, chat_file):
    result = runner.invoke(app, ["evaluate", str(gpt), str(chat_file), "--task", "chat"])
    assert result.exit_code == 1
    assert "is not a chat model (it is a clm gpt model); finetune one with `lmkit finetune BASE " in result.stderr


def test_generate_messages_answers_each_conversation_as_a_chat_session_does(chat_model, tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions(4)))
    result = runner.invoke(app, ["generate", str(chat_model), "--messages", str(data), "--temperature", "0",
                                 "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    generator = Generator(read_checkpoint(chat_model))
    for record, question in zip(records, questions(4), strict=True):
        session = ChatSession(generator, GREEDY)
        session.history = question["messages"][:-1]
        assert record["messages"] == question["messages"]
        assert record["reply"] == session.reply(question["messages"][-1]["content"])[0].text
    piped = runner.invoke(app, ["generate", str(chat_model), "--messages", "-", "--temperature", "0",
                                "--max-new-tokens", "12"], input=data.read_text())
    assert piped.stdout == result.stdout
    plain = runner.invoke(app, ["generate", str(chat_model), "My colour is red.", "--temperature", "0",
                                "--max-new-tokens", "12"])
    one_turn = ChatSession(generator, GREEDY).reply("My colour is red.")[0].text
    assert plain.exit_code == 0 and plain.stdout == one_turn + "\n"


def test_generate_refuses_bad_conversations_and_messages_for_other_kinds(chat_model, gpt, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant",
                                                                                 "content": "Hey"}]}) + "\n")
    result = runner.invoke(app, ["generate", str(chat_model), "--messages", str(data)])
    assert result.exit_code == 1 and "bad.jsonl:1: turn 2: the conversation must end with the user's turn" in \
        result.stderr
    result = runner.invoke(app, ["generate", str(gpt), "--messages", str(data)])
    assert result.exit_code == 1 and "--messages: " in result.stderr and "not a chat model" in result.stderr
    result = runner.invoke(app, ["generate", str(chat_model), "--interactive"])
    assert result.exit_code == 1 and f"is a chat model: `lmkit chat {chat_model}` holds a conversation" in \
        result.stderr
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"messages": [{"role": "user", "content": "word " * 100},
                                             {"role": "assistant", "content": "ok"},
                                             {"role": "user", "content": "Which colour?"}]}) + "\n")
    result = runner.invoke(app, ["generate", str(chat_model), "--messages", str(long), "--truncate", "error"])
    assert result.exit_code == 1 and "long.jsonl:1: " in result.stderr and "--truncate left" in result.stderr
    dropped = runner.invoke(app, ["generate", str(chat_model), "--messages", str(long), "--temperature", "0",
                                  "--max-new-tokens", "4"])
    assert dropped.exit_code == 0, dropped.output  # the oldest exchange is left out


def test_a_chat_session_keeps_its_history_within_the_context(chat_model):
    generator = Generator(read_checkpoint(chat_model))
    session = ChatSession(generator, GREEDY)
    first, dropped = session.reply("My colour is blue.")
    assert dropped == 0 and [m["role"] for m in session.history] == ["user", "assistant"]
    for _ in range(12):  # each exchange is ~20 tokens: the block of 128 (less the reply's room) fills up
        session.reply("Which colour?")
    ids, _, _ = generator.encode_messages(session.history + [{"role": "user", "content": "Which colour?"}],
                                          room=session.room)
    assert len(ids) <= generator.block_size - session.room
    assert session.history[0]["role"] == "user" and len(session.history) < 26
    assert session.transcript()["messages"][0] == {"role": "system", "content": "Be brief."}
    session.reset()
    assert session.history == []


def test_checkpoints_of_another_format_are_refused_and_older_ones_read(chat_model, gpt, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(chat_model, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 3
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"checkpoint format version 3 is not supported by lmkit .* \(reads "
                                            r"versions 1, 2\)"):
        read_checkpoint(copy)
    assert read_checkpoint(gpt).chat is None and read_checkpoint(gpt).stop_ids == (3,)


def test_a_malformed_chat_entry_in_model_json_is_refused(chat_model, tmp_path):
    from tests.generation.checkpoints import write_model

    checkpoint = read_checkpoint(chat_model)
    for number, (chat, message) in enumerate((({"template": ""}, "'chat' needs a non-empty 'template' string"),
                                              ({"template": "x", "end_of_turn": -1},
                                               "'end_of_turn' must be a token id"))):
        path = write_model(tmp_path / f"bad{number}", checkpoint.build_model(), checkpoint.model_config, "chat",
                           checkpoint.tokenizer_path, {"chat": chat})
        with pytest.raises(UserError, match=message):
            read_checkpoint(path)


def one_error(result) -> str:
    """The one `error: ` line of a refused command (exit 1, no traceback), without its prefix."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0].removeprefix("error: ")


@pytest.mark.parametrize("task,bad,message", [
    ("chat", {"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hello."}]},
     r"held-out.jsonl:2: no user turn before the final assistant turn to answer$"),
    ("chat-lm", {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]},
     r"held-out.jsonl:2: \d+ tokens, more than the model's context \(128\); shorten the conversation$"),
], ids=["no-user-turn", "longer-than-the-context"])
def test_evaluate_refuses_a_conversation_it_cannot_score_naming_its_line(chat_model, tmp_path, task, bad, message):
    data = tmp_path / "held-out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [chat_records(1)[0], bad, *chat_records(2, seed=3)]))
    result = runner.invoke(app, ["evaluate", str(chat_model), str(data), "--task", task, "--precision", "fp32",
                                 "--out", str(tmp_path / "report")])
    assert re.search(message, one_error(result))
    assert not (tmp_path / "report").exists()


def test_chat_finetuning_refuses_what_leaves_nothing_to_train_with_nothing_written(gpt, lstm, chat_file, tmp_path):
    long = tmp_path / "long.jsonl"  # every conversation longer than the window: all skipped, none left
    long.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "word " * 200},
                                                     {"role": "assistant", "content": w}]}) + "\n"
                            for w in ("red", "blue")))
    result = runner.invoke(app, ["finetune", str(gpt), str(long), "--out", str(tmp_path / "run"), "--max-steps", "1",
                                 "--micro-batch", "2", "--seq-len", "128", "--skip-bad-records"])
    assert one_error(result) == f"{long}: no conversation fits the window (--seq-len 128)"
    result = runner.invoke(app, ["finetune", str(lstm), str(chat_file), "--out", str(tmp_path / "run"),
                                 "--max-steps", "1", "--micro-batch", "2", "--seq-len", "128", "--pack"])
    assert one_error(result) == ("--pack: packs conversations with a block-diagonal attention mask, which an lstm "
                                 "model does not have; drop --pack")
    assert not (tmp_path / "run").exists()


def test_a_chat_session_refuses_an_empty_message_and_keeps_its_history(chat_model):
    session = ChatSession(Generator(read_checkpoint(chat_model)), GREEDY)
    session.history = [{"role": "user", "content": "My colour is red."}, {"role": "assistant", "content": "Noted."}]
    for blank in ("", "  \n\t"):
        with pytest.raises(UserError, match="^the message is empty$"):
            session.reply(blank)
    assert session.history == [{"role": "user", "content": "My colour is red."},
                               {"role": "assistant", "content": "Noted."}]
