"""Sentence-pair windows (NSP, SOP): where boundaries are, what a pair holds, its statistics and determinism."""

import numpy as np
import pytest

from lmkit import artifacts
from lmkit.data.packing import MaskingSettings, load_stream
from lmkit.data.sentence_pairs import SentencePairs, find_boundaries, piece_classes
from lmkit.tokenizer import load as load_tokenizer
from lmkit.vocab import CLS_ID, IGNORE_INDEX, LMKIT, PAD_ID, SEP_ID, Specials

SEQ_LEN = 128


def test_piece_classes_read_sentencepiece_gpt2_and_wordpiece_vocabularies():
    sentencepiece = piece_classes(["<pad>", "▁end.", "▁The", "ing", "<0x0A>", "?", "▁e.g"], Specials(pad=0, eos=99))
    assert sentencepiece.ends.tolist() == [False, True, False, False, False, True, False]
    assert sentencepiece.starts.tolist() == [False, True, True, False, False, False, True]
    assert sentencepiece.breaks.tolist() == [False, False, False, False, True, False, False]
    gpt2 = piece_classes(["Ġend", ".", "Ċ", "ĠThe"], Specials(pad=99, eos=98))
    assert gpt2.ends.tolist() == [False, True, False, False] and gpt2.starts.tolist() == [True, False, False, True]
    assert gpt2.breaks.tolist() == [False, False, True, False]
    wordpiece = piece_classes(["[PAD]", "the", "##s", "##t", "."], Specials(pad=0, eos=0))
    assert wordpiece.starts.tolist() == [False, True, False, False, True]


@pytest.fixture(scope="module")
def split(dataset):
    art = artifacts.load(dataset)
    tokenizer = load_tokenizer(art.path / "tokenizer")
    classes = piece_classes([tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)], LMKIT)
    stream = load_stream(art, "train", SEP_ID)
    return stream, find_boundaries(stream, classes), tokenizer


def pairs(split, task):
    stream, boundaries, _ = split
    return SentencePairs(stream, boundaries, task, SEQ_LEN, 400, MaskingSettings(), LMKIT)


def test_boundaries_start_a_sentence_inside_a_document(split):
    stream, boundaries, tokenizer = split
    starts, lengths = stream.document_spans()
    assert len(boundaries) > 100 and boundaries.document_count > 10
    assert np.all(boundaries.positions > starts[boundaries.documents])
    assert np.all(boundaries.positions < starts[boundaries.documents] + lengths[boundaries.documents])
    for position in boundaries.positions[:50]:
        before = tokenizer.decode(stream.gather(np.arange(position - 3, position)).tolist())
        after = tokenizer.id_to_piece(int(stream.gather(np.array([position]))[0]))
        assert before.rstrip().endswith((".", "!", "?")) and after.startswith("▁"), (before, after)
    # every ". X" inside a document is found: count them in the decoded text of the first documents
    for document in range(5):
        text = tokenizer.decode(stream.gather(np.arange(starts[document],
                                                        starts[document] + lengths[document])).tolist())
        expected = sum(text.count(f"{mark} ") for mark in ".!?")
        assert int((boundaries.documents == document).sum()) == expected, text


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_pairs_are_framed_with_segment_ids_and_half_are_negatives(split, task):
    stream, boundaries, _ = split
    windows = pairs(split, task)
    rows = 2000
    indices = windows.sample(seed=3, start=0, length=rows)
    batch = windows.batch(indices, 3, [(position,) for position in range(rows)])
    labels = batch.labels.numpy()
    # 0.5 within 4 binomial standard deviations (0.045 at 2000 rows)
    assert abs(labels.mean() - 0.5) < 0.045
    starts, lengths = stream.document_spans()
    clean = np.where(batch.targets.numpy() != IGNORE_INDEX, batch.targets.numpy(), batch.inputs.numpy())
    sentence_starts = set(boundaries.positions.tolist()) | set(starts.tolist())
    sentence_ends = set(boundaries.positions.tolist()) | set((starts + lengths).tolist())
    whole = 0
    for row in range(200):
        ids, types, real = clean[row], batch.token_types[row].numpy(), batch.attention_mask[row].numpy()
        n = int(real.sum())
        assert ids[0] == CLS_ID and ids[n - 1] == SEP_ID and np.all(ids[n:] == PAD_ID) and real[:n].all()
        middle = int(np.flatnonzero(ids[:n] == SEP_ID)[0])
        assert types[:middle + 1].tolist() == [0] * (middle + 1) \
            and types[middle + 1:n].tolist() == [1] * (n - middle - 1)
        assert not types[n:].any() and n <= SEQ_LEN
        first, second = ids[1:middle], ids[middle + 1:n - 1]
        assert len(first) and len(second)
        position = int(boundaries.positions[indices[row]])
        if task == "sop" and labels[row]:
            first, second = second, first
        # A ends at the boundary; B starts there unless NSP gave it another document's sentence
        assert stream.gather(np.arange(position - len(first), position)).tolist() == first.tolist()
        following = stream.gather(np.arange(position, position + len(second))).tolist() == second.tolist()
        assert following == (task == "sop" or labels[row] == 0)
        # whole sentences: a segment is cut only where one sentence does not fit (then it fills its room)
        room = SEQ_LEN - 3
        assert position - len(first) in sentence_starts or len(first) >= room // 2
        if following:
            assert position + len(second) in sentence_ends or len(first) + len(second) == room
            whole += position - len(first) in sentence_starts and position + len(second) in sentence_ends
        if task == "nsp" and labels[row]:
            document = boundaries.documents[indices[row]]  # B is another document's sentence start
            starts_b = [p for p in boundaries.positions[boundaries.documents != document]
                        if stream.gather(np.arange(p, p + len(second))).tolist() == second.tolist()]
            assert starts_b
    # and a good share are whole on both sides (this corpus has long sentences: 93 of 200 for SOP)
    assert whole > 0.4 * sum(1 for row in range(200) if task == "sop" or labels[row] == 0)


def test_a_pair_depends_only_on_the_seed_and_its_position(split):
    windows = pairs(split, "nsp")
    indices = windows.sample(seed=1, start=40, length=8)
    together = windows.batch(indices, 1, [(p,) for p in range(40, 48)])
    for row, position in enumerate(range(40, 48)):
        alone = windows.batch(indices[row:row + 1], 1, [(position,)])
        for name in ("inputs", "targets", "token_types", "attention_mask", "labels"):
            assert np.array_equal(getattr(alone, name)[0].numpy(), getattr(together, name)[row].numpy()), name
    other = windows.batch(indices, 2, [(p,) for p in range(40, 48)])
    assert not np.array_equal(other.inputs.numpy(), together.inputs.numpy())
