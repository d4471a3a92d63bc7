"""The span model's pieces: token character offsets (lmkit's and imported tokenizers'), characters to tokens,
the windows of a long context, the best span across windows, and the model's loss."""

import random

import pytest
import torch

from lmkit.data.framing import window_starts
from lmkit.data.qa_windows import QASettings, Window, answer_tokens, content_spans, make_windows, with_answer
from lmkit.evaluation.spans import best_spans
from lmkit.models.config import ModelConfig
from lmkit.models.span import SpanExtractor
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import LMKIT

TEXTS = ["Héllo wörld  ✓ x\u2581y 日本 os.path.join() 😀x", " leading space", "\nfoo\tbar\n", "", "a\u2581 b"]


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return Tokenizer.from_artifact(dataset / "tokenizer")


def test_lmkit_offsets_spell_the_text_and_equal_sentencepiece_s_own(tokenizer):
    pytest.importorskip("google.protobuf")  # sentencepiece's own offsets come as a protobuf
    rng = random.Random(0)
    texts = TEXTS + ["".join(rng.choice("ab é日😀\u2581\n\t.,") for _ in range(rng.randint(0, 30))) for _ in range(300)]
    for text in texts:
        ids, spans = tokenizer.encode_offsets(text)
        assert ids == tokenizer.encode(text)
        proto = tokenizer.sp.encode(text, out_type="serialized_proto")
        from sentencepiece import sentencepiece_pb2

        pieces = sentencepiece_pb2.SentencePieceText.FromString(proto).pieces
        char_at = {len(text[:i].encode()): i for i in range(len(text) + 1)}
        for piece, (start, end) in zip(pieces, spans, strict=True):
            if piece.begin == piece.end:  # the leading bytes of a character, or the dummy prefix alone
                assert start == char_at[piece.begin] and end in (start, start + 1)
            else:
                assert (start, end) == (char_at[piece.begin], char_at[piece.end])


def test_offsets_cover_the_text_in_order(tokenizer):
    for text in TEXTS:
        _, spans = tokenizer.encode_offsets(text)
        covered = "".join(text[a:b] for a, b in dict.fromkeys(spans))  # byte pieces of one character share a span
        assert covered == text


def test_imported_tokenizer_offsets(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from lmkit.tokenizer import HFTokenizer

    backend = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["the capital of France is Paris"] * 10, trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    hf = HFTokenizer(tmp_path / "tokenizer.json", LMKIT)
    text = "The capital: Paris."
    ids, spans = hf.encode_offsets(text)
    assert ids == hf.encode(text)
    trimmed = content_spans(text, spans)
    first, last = answer_tokens(trimmed, text.index("Paris"), text.index("Paris") + 5)
    assert text[trimmed[first][0]:trimmed[last][1]] == "Paris"


def test_characters_to_tokens_skip_leading_spaces():
    context = "Paris is  big"
    spans = content_spans(context, [(0, 5), (5, 8), (8, 9), (9, 13)])  # "Paris", " is", " ", " big"
    assert spans == [(0, 5), (6, 8), (9, 9), (10, 13)]
    assert answer_tokens(spans, 6, 8) == (1, 1)          # "is"
    assert answer_tokens(spans, 6, 13) == (1, 3)         # "is  big": the space-only token is inside
    assert answer_tokens(spans, 8, 10) is None           # white space alone
    assert answer_tokens(spans, 1, 3) == (0, 0)          # inside a token: the whole token


def test_windows_repeat_the_question_and_overlap():
    question, context = [100, 101], list(range(200, 240))  # 40 context tokens
    windows = make_windows(3, question, context, max_len=20, stride=6, specials=LMKIT)
    room = 20 - 3 - 2
    assert window_starts(40, room, 6) == [w.first for w in windows] == [0, 6, 12, 18, 24, 25]
    for w in windows:
        assert w.ids[:4] == [LMKIT.cls, 100, 101, LMKIT.sep] and w.ids[-1] == LMKIT.sep and len(w.ids) <= 20
        assert w.ids[w.context_start:w.context_start + w.length] == context[w.first:w.first + w.length]
        assert w.types == [0] * 4 + [1] * (w.length + 1) and w.example == 3
    # the answer (tokens 20..22) lies whole in the windows starting at 12 and 18 (15 tokens each), else [CLS]
    targeted = [with_answer(w, (20, 22)) for w in windows]
    assert [(w.start, w.end) for w in targeted] == [(0, 0), (0, 0), (12, 14), (6, 8), (0, 0), (0, 0)]
    assert all(w.ids[w.start:w.end + 1] == [220, 221, 222] for w in targeted if w.start)
    assert len(make_windows(0, question, context[:10], 20, 0, LMKIT)) == 1  # fits: one window
    long_question = make_windows(0, list(range(30)), context, 20, 0, LMKIT)[0]
    assert long_question.context_start == 2 + (20 - 3) // 2  # the question is cut to half a pair's room


def window(first, length, example=0):
    return Window(example, [0] * (2 + length), [0] * (2 + length), 2, first, length)


def logits_for(length, starts, ends):
    out = torch.full((2 + length, 2), -10.0)
    for position, value in starts.items():
        out[2 + position, 0] = value
    for position, value in ends.items():
        out[2 + position, 1] = value
    return out


def test_best_span_across_windows():
    spans = [[(i * 2, i * 2 + 1) for i in range(12)]]
    windows = [window(0, 8), window(4, 8)]
    logits = [logits_for(8, {1: 2.0}, {2: 2.0}),          # tokens 1..2, score 4
              logits_for(8, {3: 3.0}, {5: 2.5})]          # tokens 7..9 in the second window, score 5.5: wins
    (best,) = best_spans(logits, windows, spans, max_answer_tokens=30)
    assert (best.first, best.last, best.score) == (7, 9, 5.5)
    # end before start is never chosen: a high end logit before the best start
    logits = [logits_for(8, {5: 4.0}, {1: 9.0, 6: 1.0}), logits_for(8, {}, {})]
    (best,) = best_spans(logits, windows, spans, 30)
    assert best.first <= best.last and (best.first, best.last) == (5, 6)
    # too long an answer is not chosen: start 0, end 7 (8 tokens) with a limit of 4
    logits = [logits_for(8, {0: 5.0}, {7: 5.0, 2: 1.0}), logits_for(8, {}, {})]
    (best,) = best_spans(logits, windows, spans, 4)
    assert (best.first, best.last) == (0, 2)
    # tokens without content (white space) are no answer's ends
    blank = [[(0, 0)] * 3 + [(6, 7)] + [(0, 0)] * 8]
    (best,) = best_spans([logits_for(8, {0: 9.0, 3: 1.0}, {3: 1.0}), logits_for(8, {}, {})], windows, blank, 30)
    assert (best.first, best.last) == (3, 3)


def test_span_model_loss_is_the_mean_of_start_and_end_cross_entropy():
    config = ModelConfig(arch="bert", vocab_size=400, n_layer=1, n_head=2, d_model=32, block_size=32, dropout=0.0)
    model = SpanExtractor(config).eval()
    assert not hasattr(model.backbone, "lm_head") and model.backbone.pooler is None
    idx = torch.randint(10, 400, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    targets = torch.tensor([[3, 5], [0, 0]])
    logits, loss = model(idx, targets, mask)
    assert logits.shape == (2, 12, 2) and torch.isinf(logits[1, 8:]).all()
    expected = (torch.nn.functional.cross_entropy(logits[..., 0], targets[:, 0])
                + torch.nn.functional.cross_entropy(logits[..., 1], targets[:, 1])) / 2
    assert torch.allclose(loss, expected)
    assert QASettings.from_head(QASettings(48, 0, 30).to_head()) == QASettings(48, 0, 30)
    with pytest.raises(ValueError):
        QASettings.from_head({"max_len": "48"})
