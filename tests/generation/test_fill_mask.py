"""Fill-mask on a tiny BERT: k candidates per [MASK], probabilities from the model, texts encoded as the
model saw them in training."""

import pytest
import torch

from lmkit.checkpoint import read_checkpoint
from lmkit.errors import UserError
from lmkit.generation.fill_mask import encode_masked, fill_mask
from lmkit.generation.model import load_model
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import CLS_ID, MASK_ID, SEP_ID


@pytest.fixture(scope="module")
def masked_lm(bert):
    checkpoint = read_checkpoint(bert)
    return load_model(checkpoint), Tokenizer.from_artifact(checkpoint.tokenizer_path)


def test_candidates_are_the_model_s_most_likely_text_tokens(masked_lm):
    model, tokenizer = masked_lm
    texts = ["The for statement is [MASK] to iterate", "A [MASK] is an object"]
    results = fill_mask(model, tokenizer, texts, top_k=4)
    assert [len(per_mask) for per_mask in results] == [1, 1]
    for text, (candidates,) in zip(texts, results):
        probabilities = [c.probability for c in candidates]
        assert len(candidates) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
        assert all(c.id >= 7 for c in candidates)  # never a special token
        # The probabilities are the model's own softmax at the mask, batch or not.
        ids = encode_masked(tokenizer, text)
        logits, _ = model(torch.tensor([ids]))
        probs = torch.softmax(logits[0, ids.index(MASK_ID)], dim=-1)
        for candidate in candidates:
            assert candidate.probability == pytest.approx(probs[candidate.id].item(), abs=1e-5)
        assert candidates[0].text.startswith(text.split(" [MASK]")[0])


def test_one_candidate_list_per_mask_and_the_filled_text(masked_lm):
    model, tokenizer = masked_lm
    (per_mask,) = fill_mask(model, tokenizer, ["[MASK] loop and a [MASK]"], top_k=2)
    assert len(per_mask) == 2 and all(len(c) == 2 for c in per_mask)
    first, second = per_mask[0][0], per_mask[1][0]
    assert first.text.endswith(" loop and a [MASK]")
    assert second.text.startswith("[MASK] loop and a") and "[MASK]" not in second.text[5:]


def test_text_around_a_mask_is_encoded_as_inside_a_line(masked_lm):
    _, tokenizer = masked_lm
    # The mask stands where training masked one token of the whole text ("▁the", space included).
    before, word, after = "It is", " the", " object, and sa"
    whole, head = tokenizer.encode(before + word + after), tokenizer.encode(before)
    assert tokenizer.encode(before + word)[len(head):] == [whole[len(head)]], "the word must be one token"
    ids = encode_masked(tokenizer, f"{before} [MASK]{after}")
    assert ids == [CLS_ID, *head, MASK_ID, *whole[len(head) + 1:], SEP_ID]
    # After a mask, no space is invented: "[MASK]s" continues the word.
    rest = encode_masked(tokenizer, "[MASK]s are")[2:-1]
    assert tokenizer.id_to_piece(rest[0]) == "s" and tokenizer.decode(rest) == "s are"


def test_texts_without_a_mask_or_too_long_are_refused(masked_lm):
    model, tokenizer = masked_lm
    with pytest.raises(UserError, match=r"text 2: no \[MASK\] in the text"):
        fill_mask(model, tokenizer, ["a [MASK]", "no mask here"])
    with pytest.raises(UserError, match="more than the model's block size"):
        fill_mask(model, tokenizer, ["[MASK] " + "word " * 300])
