"""Chat finetuning: next-token loss on a conversation's assistant turns, each with the token that ends it, never on
the system or user turns, over the conversations of a JSONL file (lmkit.data.conversations).

The conversations are rendered with a chat template (lmkit.data.chat_template): ``--chat-template FILE``, else the
base's own (an imported chat model's, or an earlier chat finetune's), else lmkit's ChatML, whose two tokens are
added to the base's tokenizer (``vocabulary``: the model's embedding grows by two rows, which start at the mean
of the existing rows). The template, the token that ends an assistant turn and the default system prompt go into
the checkpoint (model.json "chat"), so that ``lmkit chat``, ``generate --messages``, ``serve`` and the export
render conversations exactly as training did and stop a reply at the end of its turn.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmkit import artifacts
from lmkit.data import conversations
from lmkit.data.chat_template import CHAT_TOKENS, DEFAULT_TEMPLATE, ChatFormat, check_template
from lmkit.data.jsonl import read_text
from lmkit.errors import UserError
from lmkit.tokenizer import load as load_tokenizer
from lmkit.tokenizer import with_added_tokens
from lmkit.training.objectives.base import Built, ObjectiveInputs, ObjectiveSpec, held_out, register
from lmkit.training.objectives.instruction import InstructionTuning
from lmkit.training.objectives.objective_options import HeldOutOptions

SKIP_HINT = "; --skip-bad-records skips such records"


@dataclass(frozen=True)
class ChatOptions(HeldOutOptions):
    """What chat finetuning reads besides the held-out split: the flags of the same names."""

    chat_template: str       # a Jinja chat template file ("": the base's own, else lmkit's ChatML)
    system_prompt: str       # the system turn of conversations that have none ("": the base's, or none); stored
    last_turn_only: bool     # the loss on each conversation's last assistant turn only
    pack: bool               # pack a batch's conversations into as few rows as fit the window
    skip_bad_records: bool   # skip (and count) bad conversations instead of stopping


class ChatTuning(InstructionTuning):
    """Instruction tuning's batches and validation over conversations: the examples' ``targets()`` are the
    assistant's tokens."""

    name = "chat"


def template_source(options: ChatOptions, base: Any) -> tuple[str, str]:
    """The template to train with and where it comes from, in messages."""
    if options.chat_template:
        source = read_text(options.chat_template)
        check_template(source, f"--chat-template {options.chat_template}")
        return source, f"--chat-template {options.chat_template}"
    if base is not None and base.chat is not None:
        return base.chat.template, f"{base.path}'s own chat template"
    return DEFAULT_TEMPLATE, "lmkit's ChatML template"


def template_variables(tokenizer) -> dict[str, str]:
    """The special-token strings a template may read (``bos_token`` ...), as transformers passes its
    special_tokens_map: those the exported tokenizer_config.json names."""
    specials = tokenizer.specials
    return {f"{name}_token": tokenizer.id_to_piece(getattr(specials, name))
            for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask") if getattr(specials, name) is not None}


def _vocabulary(options: ChatOptions, tokenizer: artifacts.Artifact, base: Any) -> artifacts.Artifact:
    """The base's tokenizer, with lmkit's chat tokens added when the template writes them and it lacks them."""
    source, _where = template_source(options, base)
    loaded = load_tokenizer(tokenizer.path)
    missing = [token for token in CHAT_TOKENS if token in source and loaded.token_id(token) is None]
    if not missing:
        return tokenizer
    # Copied into every checkpoint of the run (its nested tokenizer): the temporary copy lives as long as the run.
    directory = Path(tempfile.mkdtemp(prefix="lmkit-chat-tokenizer-"))
    atexit.register(shutil.rmtree, directory, True)
    return with_added_tokens(tokenizer, missing, directory / "tokenizer")


def chat_format(options: ChatOptions, base: Any, tokenizer) -> tuple[ChatFormat, str]:
    """The format the checkpoint will hold (template, variables, system prompt, end of turn) and where its template
    comes from."""
    source, where = template_source(options, base)
    own = base.chat if base is not None and base.chat is not None and base.chat.template == source else None
    variables = own.variables if own is not None else template_variables(tokenizer)
    system = options.system_prompt or (base.chat.system if base is not None and base.chat is not None else None)
    chat = ChatFormat(source, variables, system or None)
    end = conversations.end_of_turn(chat, tokenizer, where)
    if end is None:
        raise UserError(f"{where}: the template ends an assistant turn with no special token, so a reply could "
                        "never stop at the end of its turn; end assistant turns with one (e.g. {{ eos_token }})")
    return ChatFormat(source, variables, chat.system, end), where


def read_examples(inputs: ObjectiveInputs[ChatOptions], chat: ChatFormat, tokenizer) -> list[conversations.ChatExample]:
    """The training conversations tokenized, each one refused (or skipped, counted) when it is bad or longer than
    the window."""
    options = inputs.options
    skipped = conversations.Skipped()
    found = conversations.read(inputs.data, options.skip_bad_records, skipped=skipped, hint=SKIP_HINT)
    examples = []
    for conversation in found:
        example = conversations.tokenize(conversation, chat, tokenizer, options.last_turn_only)
        if len(example.tokens) > inputs.seq_len + 1:
            problem = conversations.BadConversation(
                f"{conversation.where}: {len(example.tokens)} tokens, more than the window (--seq-len "
                f"{inputs.seq_len}) holds; shorten the conversation or raise --seq-len")
            if not options.skip_bad_records:
                raise UserError(f"{problem}{SKIP_HINT}")
            skipped.add(problem)
            continue
        examples.append(example)
    if skipped.count:
        inputs.notes.append(skipped.note("conversations"))
    if not examples:
        raise UserError(f"{inputs.data}: no conversation fits the window (--seq-len {inputs.seq_len})")
    return examples


def _build(inputs: ObjectiveInputs[ChatOptions]) -> Built:
    options = inputs.options
    tokenizer = load_tokenizer(inputs.tokenizer.path)
    chat, where = chat_format(options, inputs.base, tokenizer)
    examples = read_examples(inputs, chat, tokenizer)
    train, validation = held_out(examples, options, inputs.seed, inputs.notes, "conversations")
    trained = sum(sum(e.trained) for e in examples) / sum(len(e.tokens) for e in examples)
    turns = "the last assistant turn" if options.last_turn_only else "the assistant turns"
    inputs.notes.append(f"{where}; loss on {turns} ({trained:.0%} of the tokens), each ending with "
                        f"{tokenizer.id_to_piece(chat.end_of_turn)!r} (id {chat.end_of_turn})"
                        + (f"; default system prompt {chat.system!r}" if chat.system else ""))
    arch = inputs.model_config.arch
    if options.pack and arch != "gpt":
        raise UserError(f"--pack: packs conversations with a block-diagonal attention mask, which an {arch} model "
                        "does not have; drop --pack")
    objective = ChatTuning(train, validation, inputs.layout, inputs.seed, inputs.device, tokenizer.specials.pad,
                           inputs.seq_len if options.pack else 0)
    stop = sorted({tokenizer.specials.eos, chat.end_of_turn, *(inputs.base.stop if inputs.base is not None else ())})
    return Built(objective, {"chat": chat.to_dict(), "stop": stop})


register(ObjectiveSpec("chat", ("gpt", "lstm"), _build, "chat finetuning on multi-turn conversations",
                       metrics=("val_loss", "val_ppl", "val_token_accuracy"), unit="conversations",
                       options=ChatOptions, vocabulary=_vocabulary))
