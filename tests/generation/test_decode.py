"""The decoding loop: the KV cache against recomputing the whole sequence each step, a left-padded batch
against each prompt alone, and each way a row ends. Models in float64 with large weights: two paths
that compute the same thing then pick the same tokens, and a wrong position or mask shows at once."""

import pytest
import torch

from lmkit.generation.decode import STOP_CONTEXT, STOP_EOS, STOP_LENGTH, STOP_STRING, decode
from lmkit.generation.sampling import row_generators
from lmkit.generation.settings import SamplingSettings
from lmkit.models import build_model
from lmkit.vocab import LMKIT
from tests.models.conftest import VOCAB, tiny_config

PROMPTS = [[9, 17, 33], [40, 41, 42, 43, 44, 45, 46, 47, 48], [100], [12, 13, 14, 15, 16]]
GREEDY = SamplingSettings(max_new_tokens=12, temperature=0)
SAMPLED = SamplingSettings(max_new_tokens=12, temperature=1.0, top_k=20, seed=3)


def model_for(arch: str, **overrides):
    torch.manual_seed(1)
    model = build_model(tiny_config(arch, **overrides)).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.5)
    return model


def run(model, prompts, settings, **kwargs):
    generators = row_generators(settings.seed, [(0, i) for i in range(len(prompts))])
    kwargs.setdefault("banned", LMKIT.never_generated)
    return decode(model, prompts, settings, generators, eos_id=None, **kwargs)


MODELS = [("gpt", {}), ("gpt", {"qk_norm": True}), ("gpt", {"n_layer": 4, "share_layers": 2, "embedding_dim": 16}),
          ("lstm", {})]


@pytest.mark.parametrize("arch,overrides", MODELS)
@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_cache_equals_recomputing_every_step(arch, overrides, settings):
    model = model_for(arch, **overrides)
    cached = run(model, PROMPTS, settings)
    recomputed = run(model, PROMPTS, settings, use_cache=False)
    assert [d.ids for d in cached] == [d.ids for d in recomputed]
    assert all(len(d.ids) == 12 for d in cached)
    assert len({tuple(d.ids) for d in cached}) > 1  # the prompts lead to different text


@pytest.mark.parametrize("arch,overrides", MODELS)
@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_batched_equals_one_by_one(arch, overrides, settings):
    model = model_for(arch, **overrides)
    generators = row_generators(settings.seed, [(0, i) for i in range(len(PROMPTS))])
    batched = decode(model, PROMPTS, settings, generators, eos_id=None, banned=LMKIT.never_generated)
    for i, prompt in enumerate(PROMPTS):
        alone = decode(model, [prompt], settings, row_generators(settings.seed, [(0, i)]), eos_id=None,
                       banned=LMKIT.never_generated)
        assert alone[0].ids == batched[i].ids


def test_repetition_penalty_batched_equals_one_by_one():
    model = model_for("gpt")
    settings = SamplingSettings(max_new_tokens=10, temperature=0, repetition_penalty=3.0)
    batched = run(model, PROMPTS, settings)
    plain = run(model, PROMPTS, GREEDY)
    assert [d.ids for d in batched] != [d.ids[:10] for d in plain]  # the penalty changes the text
    for i, prompt in enumerate(PROMPTS):
        assert run(model, [prompt], settings)[0].ids == batched[i].ids
        assert not any(token in prompt for token in batched[i].ids[:1])  # a prompt token is heavily penalized


def test_rows_end_at_eos_max_new_tokens_the_context_or_when_told():
    model = model_for("gpt")  # block size 32
    first = run(model, [[5 + 2, 8]], GREEDY)[0].ids[0]
    ended = decode(model, [[5 + 2, 8]], GREEDY, row_generators(0, [(0, 0)]), eos_id=first,
                   banned=LMKIT.never_generated)
    assert ended[0].ids == [] and ended[0].reason == STOP_EOS
    long_prompt = list(range(7, 7 + 28))  # 28 tokens: room for 4 more
    results = run(model, [long_prompt, [7, 8]], GREEDY)
    assert len(results[0].ids) == 4 and results[0].reason == STOP_CONTEXT
    assert len(results[1].ids) == 12 and results[1].reason == STOP_LENGTH
    told = run(model, [[7, 8], [9]], GREEDY, should_stop=lambda row, ids: row == 0 and len(ids) == 3)
    assert told[0].ids == results[1].ids[:3] and told[0].reason == STOP_STRING
    assert told[1].ids == run(model, [[9]], GREEDY)[0].ids  # the other row goes on


def test_special_tokens_are_never_generated():
    model = model_for("gpt")
    head = torch.nn.Linear(32, VOCAB, dtype=torch.float64)  # constant logits: specials far ahead, then token 10
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(0.0)
        head.bias[[0, 1, 2, 4, 5, 6]] = 50.0
        head.bias[10] = 5.0
    model.lm_head = head
    assert run(model, [[7, 8]], GREEDY)[0].ids == [10] * 12
    assert not set(run(model, [[7, 8]], SAMPLED)[0].ids) & {0, 1, 2, 4, 5, 6}


def test_prompts_that_do_not_fit_are_a_bug_of_the_caller():
    model = model_for("gpt")
    with pytest.raises(ValueError, match="every prompt needs 1 to 31 tokens"):
        run(model, [list(range(7, 39))], GREEDY)
    with pytest.raises(ValueError, match="every prompt needs"):
        run(model, [[]], GREEDY)
