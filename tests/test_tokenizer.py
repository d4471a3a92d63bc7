import pydoc_data.topics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import UserError
from lmkit.tokenizer import SPECIAL_TOKENS, Tokenizer, TrainSettings, token_dtype_name, train

CORPUS = list(pydoc_data.topics.topics.values())[:30]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tokenizer(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    stats = train(CORPUS, out, TrainSettings(type=request.param, vocab_size=1000))
    assert stats["vocab_size"] == 1000 and stats["training_sentences_seen"] > 100
    return Tokenizer(out / "tokenizer.model")


def test_special_tokens_at_fixed_ids(tokenizer):
    for piece, token_id in SPECIAL_TOKENS.values():
        assert tokenizer.id_to_piece(token_id) == piece
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.mask_id) == (0, 3, 4)


@pytest.mark.parametrize("text", [
    "The quick brown fox.", "  indented\n\n    code(x)  # two  spaces", "emoji 👩‍💻 and 🇫🇷 flags",
    "日本語のテキストと中文文本", "[MASK] [CLS] </s> <pad> are just text here", "tab\tand\u00a0nbsp", ""])
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_id not in ids  # byte fallback: nothing is unknown
    assert not {SPECIAL_TOKENS[k][1] for k in ("mask", "cls", "sep")} & set(ids)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2581"),
               max_size=80))
def test_round_trip_any_text(tokenizer, text):
    # U+2581 is SentencePiece's space marker; lmkit's cleaner turns it into a space before tokenizing.
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_not_an_lmkit_tokenizer(tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS[:5]), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=300, minloglevel=2)
    with pytest.raises(UserError, match="not an lmkit tokenizer"):
        Tokenizer(tmp_path / "plain.model")


def test_no_training_text(tmp_path):
    with pytest.raises(UserError, match="no training text"):
        train(["", "   \n"], tmp_path, TrainSettings(vocab_size=400))


def test_token_dtype():
    assert token_dtype_name(8000) == "uint16" and token_dtype_name(65536) == "uint16"
    assert token_dtype_name(65537) == "uint32"


def test_space_marker_is_the_one_exception(tokenizer):
    from lmkit.data.cleaning import clean_text

    assert tokenizer.decode(tokenizer.encode("a\u2581b")) == "a b"
    assert tokenizer.decode(tokenizer.encode(clean_text("a\u2581b"))) == clean_text("a\u2581b")


# -- tokens added after the SentencePiece vocabulary (lmkit's chat tokens) -------------------------------------

def test_added_tokens_follow_the_vocabulary_and_are_read_in_chat_renderings_only(dataset, tmp_path):
    import json

    from lmkit import artifacts
    from lmkit.artifacts import ArtifactError
    from lmkit.tokenizer import ADDED_FILE, load, specials_in, with_added_tokens

    base = artifacts.load(dataset / "tokenizer", kind="tokenizer")
    grown = with_added_tokens(base, ["<|im_start|>", "<|im_end|>"], tmp_path / "chat")
    before, after = load(base.path), load(grown.path)
    start, end = before.vocab_size, before.vocab_size + 1
    assert after.vocab_size == before.vocab_size + 2 == grown.stats["vocab_size"]
    assert grown.manifest["format_version"] == 2 and base.manifest["format_version"] == 1  # an older lmkit refuses it
    assert after.specials.others == (start, end) == specials_in(grown.path).others
    assert set(after.specials.never_generated) >= {start, end}
    text = "<|im_start|>user\nHello, world<|im_end|>\n text"
    chat_ids = after.encode_chat(text)
    assert chat_ids[0] == start and end in chat_ids  # special strings are tokens in a rendering
    assert after.encode_chat("a</s>b") == [*before.encode("a"), 3, *before.encode("b")]  # lmkit's own specials too
    assert after.decode(chat_ids) == text
    assert after.encode(text) == before.encode(text)  # in plain text they are text, as every special token
    assert after.decode(after.encode(text)) == text and start not in after.encode(text)
    ids, spans = after.encode_chat_offsets(text)
    assert ids == chat_ids and [text[a:b] for (a, b), i in zip(spans, ids, strict=True) if i >= start] == \
        ["<|im_start|>", "<|im_end|>"]
    assert (after.id_to_piece(start), after.token_id("<|im_end|>"), after.token_id("hello")) == \
        ("<|im_start|>", end, None)
    # Adding to a grown tokenizer appends; a file whose ids do not follow the vocabulary is refused.
    twice = load(with_added_tokens(grown, ["<|tool|>"], tmp_path / "more").path)
    assert twice.added == ("<|im_start|>", "<|im_end|>", "<|tool|>") and twice.token_id("<|tool|>") == end + 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.model").write_bytes((base.path / "tokenizer.model").read_bytes())
    (tmp_path / "bad" / ADDED_FILE).write_text(json.dumps({"tokens": [{"content": "<|x|>", "id": 5}]}))
    with pytest.raises(UserError, match="the added tokens' ids do not follow the SentencePiece vocabulary"):
        load(tmp_path / "bad")
    manifest = json.loads((grown.path / "manifest.json").read_text())
    manifest["format_version"] = 3
    (grown.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"tokenizer format version 3 is not supported by lmkit .* \(reads versions "
                                            r"1, 2\)"):
        artifacts.load(grown.path, kind="tokenizer")


def test_an_imported_tokenizer_encodes_a_batch_as_each_text_alone(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from lmkit.tokenizer import HFTokenizer
    from lmkit.vocab import Specials

    backend = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]", "[PAD]", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    texts = [topic[:300] for topic in list(pydoc_data.topics.topics.values())[:40]]
    backend.train_from_iterator(texts, trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    hf = HFTokenizer(tmp_path / "tokenizer.json", Specials(pad=1, eos=2, unk=0))
    batch = texts + ["", "  two  spaces", "</s> as text", "émigré 東京 🙂"]
    assert hf.encode_batch(batch) == [hf.encode(text) for text in batch]
    assert hf.decode(hf.encode_batch(["émigré 東京 🙂"])[0]) == "émigré 東京 🙂"
