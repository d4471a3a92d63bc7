"""Tiny Hugging Face models and tokenizers of each family lmkit imports, built here: nothing is downloaded.

Each tokenizer is trained on a few lines of text (byte-level BPE for GPT-2, WordPiece for BERT,
SentencePiece for the Llama family); each model is a random transformers model of that family with
non-trivial norm gains and biases, saved with ``save_pretrained`` beside its tokenizer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from tests.conftest import paragraphs

FAMILIES = ("gpt2", "bert", "llama", "qwen2", "qwen3", "mistral")
TEXT = [*paragraphs(120), "Hello world, 漢字 and emoji 🙂 here.", "def f(x):\n    return x + 1\n",
        "runs   of    spaces\tand\ttabs"]


def _gpt2_tokenizer(out: Path, transformers):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    end = "<|endoftext|>"
    return transformers.GPT2TokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end)


def _bert_tokenizer(out: Path, transformers):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(TEXT, trainers.WordPieceTrainer(
        vocab_size=500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return transformers.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                                          pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")


def sentencepiece_dir(out: Path) -> Path:
    """A SentencePiece tokenizer.model (byte fallback) and a tokenizer_config.json naming LlamaTokenizer:
    the files of a Llama checkpoint before transformers made tokenizer.json."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT), model_writer=model, vocab_size=500, model_type="bpe",
                                   byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   hard_vocab_limit=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                                           "eos_token": "</s>", "unk_token": "<unk>"}))
    return out


def make_hf_model(family: str, out: Path, *, seed: int = 0, **config_overrides) -> Path:
    """A random tiny transformers model of ``family`` and its tokenizer, saved in ``out``."""
    import transformers

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    if family == "gpt2":
        tokenizer = _gpt2_tokenizer(out, transformers)
    elif family == "bert":
        tokenizer = _bert_tokenizer(out, transformers)
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(sentencepiece_dir(out)))
    tokenizer.save_pretrained(str(out))
    vocab = config_overrides.pop("vocab_size", len(tokenizer))
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         **config_overrides)
        model = transformers.GPT2LMHeadModel(config)
    elif family == "bert":
        config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=64,
                                         pad_token_id=tokenizer.pad_token_id, **config_overrides)
        model = transformers.BertForMaskedLM(config)
    else:
        stem = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}[family]
        # Qwen pads its embedding rows
        values = dict(vocab_size=vocab + (4 if family == "qwen2" and vocab == len(tokenizer) else 0),
                      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=family in ("qwen2", "qwen3"))
        if family == "qwen3":
            values["head_dim"] = 16  # decoupled from hidden_size / heads (8), as in real Qwen3 models
        values.update(config_overrides)
        config = getattr(transformers, stem + "Config")(**values)
        model = getattr(transformers, stem + "ForCausalLM")(config)
    with torch.no_grad():  # norms and biases away from 1 and 0, so a mapping mistake shows
        for name, parameter in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(str(out))
    return out


# -- chat models: a real Jinja chat template, special tokens for its turns, the stop ids of generation_config.json --

# Qwen2.5-Instruct's template as published (tools, tool calls and tool responses included), and Llama 3's.
QWEN_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == "
    "\"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
CHAT_STYLES = {
    # style: (model family, special tokens, eos, bos, end of turn, template)
    "qwen2": ("qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None, "<|im_end|>",
              QWEN_TEMPLATE),
    "llama3": ("llama", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>"], "<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE),
}


def make_chat_model(style: str, out: Path, *, seed: int = 0) -> Path:
    """A random tiny chat model in ``out``: a byte-level BPE tokenizer with the style's special tokens (Llama 3's
    adds its <|begin_of_text|> to a prompt, as the real one does), its chat template in tokenizer_config.json,
    and a generation_config.json whose eos_token_id lists the end of turn and the end of text."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    family, specials, eos, bos, end, template = CHAT_STYLES[style]
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=500, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    pad = "<|endoftext|>" if style == "qwen2" else "<|end_of_text|>"
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad,
                                                     **({"bos_token": bos} if bos else {}))
    tokenizer.chat_template = template
    tokenizer.save_pretrained(str(out))
    ids = {token: tok.token_to_id(token) for token in specials}
    stem = {"qwen2": "Qwen2", "llama": "Llama"}[family]
    config = getattr(transformers, stem + "Config")(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=ids.get(bos), eos_token_id=ids[end],
        pad_token_id=ids[pad], tie_word_embeddings=family == "qwen2")
    model = getattr(transformers, stem + "ForCausalLM")(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.2)
    model.generation_config = transformers.GenerationConfig(bos_token_id=ids.get(bos), pad_token_id=ids[pad],
                                                            eos_token_id=sorted({ids[end], ids[eos], ids[pad]}))
    model.save_pretrained(str(out))
    return out


def conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """``count`` conversations of 1 to 4 exchanges on the test paragraphs, most with a system prompt, some ending
    with the user's turn (to be answered) and some with the assistant's."""
    import random

    rng = random.Random(seed)
    texts = paragraphs(200)
    found = []
    for _ in range(count):
        messages = [{"role": "system", "content": rng.choice(texts)[:60]}] if rng.random() < 0.7 else []
        for _turn in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": rng.choice(texts)[:rng.randint(5, 80)]})
            messages.append({"role": "assistant", "content": rng.choice(texts)[:rng.randint(1, 60)]})
        if rng.random() < 0.5:
            messages.pop()
        found.append(messages)
    return found
