import pytest
import torch

from lmkit.models import build_model
from tests.models.conftest import VOCAB, tiny_config


def model_and_tokens():
    torch.manual_seed(0)
    model = build_model(tiny_config("bert")).eval()
    idx = torch.randint(7, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    idx[:, 0] = 5  # [CLS]
    return model, idx


def test_encoder_is_bidirectional():
    model, idx = model_and_tokens()
    changed = idx.clone()
    changed[:, 12] = (idx[:, 12] + 1 - 7) % (VOCAB - 7) + 7
    with torch.no_grad():
        logits, logits_changed = model(idx)[0], model(changed)[0]
    assert (logits[:, :12] - logits_changed[:, :12]).abs().amax(dim=-1).min() > 1e-6  # every earlier position


def test_padding_is_invisible_to_real_tokens():
    model, idx = model_and_tokens()
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    changed = idx.clone()
    changed[1, 10:] = (idx[1, 10:] + 3 - 7) % (VOCAB - 7) + 7
    with torch.no_grad():
        logits, logits_changed = model(idx, attention_mask=mask)[0], model(changed, attention_mask=mask)[0]
        unmasked, unmasked_changed = model(idx)[0], model(changed)[0]
    assert torch.equal(logits[0], logits_changed[0])
    assert torch.equal(logits[1, :10], logits_changed[1, :10])
    assert not torch.allclose(unmasked[1, :10], unmasked_changed[1, :10])  # without the mask they would change


def test_encode_and_pooling():
    model, idx = model_and_tokens()
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    with torch.no_grad():
        hidden = model.encode(idx, mask)
        cls = model.pooled(idx, mask, method="cls")
        mean = model.pooled(idx, mask, method="mean")
        mean_unmasked = model.pooled(idx, method="mean")
    assert hidden.shape == (2, 16, 32) and cls.shape == mean.shape == (2, 32)
    assert torch.equal(cls, hidden[:, 0])
    assert torch.allclose(mean[0], hidden[0].mean(0), atol=1e-6)
    assert torch.allclose(mean[1], hidden[1, :10].mean(0), atol=1e-6)  # padding left out of the mean
    assert torch.allclose(mean_unmasked, model.encode(idx).mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        model.pooled(idx, method="max")


def test_mlm_head_has_a_vocabulary_bias_and_tied_decoder():
    model, _ = model_and_tokens()
    assert model.lm_head.bias.shape == (VOCAB,) and torch.equal(model.lm_head.bias, torch.zeros(VOCAB))
    assert model.lm_head.weight is model.tok_emb.weight


def test_the_sentence_pair_loss_is_the_masked_lm_loss_plus_the_sentence_heads_cross_entropy():
    import torch.nn.functional as F

    from lmkit.errors import ConfigError
    from lmkit.models.classifier import SequenceClassifier, default_pooling
    from lmkit.models.loss import token_loss

    torch.manual_seed(0)
    config = tiny_config("bert", pooler=True, sentence_head=True, type_vocab_size=2)
    model = build_model(config).eval()
    idx = torch.randint(7, VOCAB, (3, 16), generator=torch.Generator().manual_seed(1))
    types = torch.zeros_like(idx)
    types[:, 9:] = 1
    targets = torch.full_like(idx, -100)
    targets[:, 4] = idx[:, 4]
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        (logits, sentence), loss = model(idx, targets, token_types=types, sentence_targets=labels)
        _, fused = model(idx, targets, token_types=types, sentence_targets=labels, return_logits=False)
        hidden = model.encode(idx, None, types)
        expected = token_loss(logits, targets) + F.cross_entropy(sentence, labels)
        assert torch.allclose(loss, expected) and torch.allclose(fused, expected, atol=1e-5)
        assert torch.allclose(sentence, model.sentence_head(torch.tanh(model.pooler(hidden[:, 0]))))
        assert not torch.allclose(model.encode(idx), hidden)  # segment ids reach the encoder
    # a classifier on it reads the pooler the sentence task trained, and drops the pretraining heads
    assert default_pooling(config, pretrained=True) == "cls"
    classifier = SequenceClassifier(config, 2, "cls")
    assert not any(name.startswith(("backbone.sentence_head", "backbone.mlm_head")) for name in classifier.state_dict())
    with pytest.raises(ConfigError, match="--sentence-head: a sentence-pair head reads BERT's pooler"):
        tiny_config("bert", sentence_head=True)
