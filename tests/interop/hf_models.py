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
