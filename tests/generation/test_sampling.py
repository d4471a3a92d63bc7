"""Sampling on a fixed distribution: the allowed set of each filter, frequencies against the renormalized
probabilities over many draws, the repetition penalty's arithmetic, seeds, and the settings' refusals."""

import math

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.generation.sampling import (
    filtered_probs,
    next_tokens,
    next_tokens_per_row,
    penalize_repetition,
    prompt_key,
    row_generators,
    sample_from,
)
from lmkit.generation.settings import SamplingSettings, parse_stop

PROBS = torch.tensor([0.35, 0.25, 0.15, 0.10, 0.07, 0.05, 0.03])
LOGITS = PROBS.log()[None]  # (1, V)
DRAWS = 40_000


def frequencies(probs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Frequencies of each token over DRAWS inverse-CDF draws from probs (V,)."""
    uniforms = torch.rand(DRAWS, generator=torch.Generator().manual_seed(seed))
    tokens = sample_from(probs.expand(DRAWS, -1), uniforms)
    return torch.bincount(tokens, minlength=probs.shape[-1]).double() / DRAWS


def expected(allowed: list[int]) -> torch.Tensor:
    kept = torch.zeros_like(PROBS, dtype=torch.float64)
    kept[allowed] = PROBS[allowed].double()
    return kept / kept.sum()


def check_frequencies(observed: torch.Tensor, target: torch.Tensor) -> None:
    assert (observed[target == 0] == 0).all(), f"sampled outside the allowed set: {observed}"
    # 5 standard errors of a binomial frequency: a false alarm is a ~1e-6 event per token.
    tolerance = 5 * torch.sqrt(target * (1 - target) / DRAWS) + 1e-9
    assert ((observed - target).abs() <= tolerance).all(), f"{observed} vs {target}"


@pytest.mark.parametrize("settings,allowed", [
    ({}, [0, 1, 2, 3, 4, 5, 6]),
    ({"top_k": 3}, [0, 1, 2]),
    ({"top_k": 1}, [0]),
    ({"top_p": 0.6}, [0, 1]),          # 0.35 < 0.6 <= 0.35 + 0.25: the smallest set reaching 0.6
    ({"top_p": 0.61}, [0, 1, 2]),
    ({"top_p": 0.1}, [0]),             # the most likely token always stays
    ({"min_p": 0.3}, [0, 1, 2]),       # p >= 0.3 * 0.35 = 0.105
    ({"min_p": 0.5}, [0, 1]),
    ({"top_k": 4, "top_p": 0.9}, [0, 1, 2, 3]),  # top-p on the renormalized top 4 (0.85 total): 0.9 needs all 4
    ({"top_k": 5, "top_p": 0.8, "min_p": 0.5}, [0, 1]),
])
def test_filters_keep_the_allowed_set_and_renormalize(settings, allowed):
    probs = filtered_probs(LOGITS, **settings)[0]
    assert torch.allclose(probs.double(), expected(allowed), atol=1e-6)
    check_frequencies(frequencies(probs), expected(allowed))


def test_frequencies_follow_the_temperature():
    settings = SamplingSettings(temperature=0.5, top_k=3)
    generators = [torch.Generator().manual_seed(i) for i in range(4000)]
    tokens = next_tokens(LOGITS.expand(4000, -1), settings, None, generators)
    sharpened = PROBS[:3] ** 2 / (PROBS[:3] ** 2).sum()  # p^(1/T), renormalized over the top 3
    observed = torch.bincount(tokens, minlength=7).double() / 4000
    assert (observed[3:] == 0).all()
    assert ((observed[:3] - sharpened).abs() < 5 * torch.sqrt(sharpened * (1 - sharpened) / 4000)).all()


def test_zero_probability_tokens_are_never_drawn_even_at_the_edges():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]])
    edges = torch.tensor([0.0, 0.4999999, 0.5, 0.9999999, 1.0 - 1e-12])
    tokens = sample_from(probs.expand(len(edges), -1), edges)
    assert tokens.tolist() == [1, 1, 3, 3, 3]


def test_greedy_takes_the_argmax_whatever_the_generators():
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, -1.0, 2.0]])
    assert next_tokens(logits, SamplingSettings(temperature=0), None, []).tolist() == [1, 0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, -0.5]])
    seen = torch.tensor([[True, True, False, False]])
    assert penalize_repetition(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -0.5]]
    # A seen token loses to an unseen one it beat before.
    settings = SamplingSettings(temperature=0, repetition_penalty=2.5)
    assert next_tokens(logits, settings, seen, []).tolist() == [2]
    assert next_tokens(logits, SamplingSettings(temperature=0), seen, []).tolist() == [0]


def test_rows_of_different_settings_each_draw_what_they_draw_alone():
    # Continuous batching: rows of different settings share a step; each row's token and generator state must be
    # exactly those of next_tokens on the row alone (bitwise: the same functions on the row's own numbers).
    settings = [SamplingSettings(temperature=0), SamplingSettings(temperature=0.7, top_k=3),
                SamplingSettings(temperature=1.3, top_p=0.6, min_p=0.05), SamplingSettings(temperature=0.7, top_k=3),
                SamplingSettings(temperature=1.0, repetition_penalty=1.5), SamplingSettings(temperature=0,
                                                                                           repetition_penalty=2.0)]
    logits = torch.randn(len(settings), 50, generator=torch.Generator().manual_seed(0)) * 3
    seen = torch.rand(len(settings), 50, generator=torch.Generator().manual_seed(1)) < 0.3
    for step in range(20):
        together = row_generators(step, [(i,) for i in range(len(settings))])
        alone = row_generators(step, [(i,) for i in range(len(settings))])
        chosen = next_tokens_per_row(logits, settings, seen, together)
        expected = [int(next_tokens(logits[i:i + 1], each, seen[i:i + 1], [alone[i]])) for i, each in
                    enumerate(settings)]
        assert chosen.tolist() == expected
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(together, alone, strict=True))
        logits = logits.roll(step + 1, dims=1)
    # The positive control: the rows' settings matter (the same logits under one setting give other tokens).
    uniform = next_tokens_per_row(logits, [settings[2]] * len(settings), seen, row_generators(0, [(i,) for i in
                                                                                                range(6)]))
    assert uniform.tolist() != next_tokens_per_row(logits, settings, seen, row_generators(0, [(i,) for i in
                                                                                             range(6)])).tolist()


def test_row_generators_are_reproducible_and_distinct():
    first = [torch.rand(3, generator=g) for g in row_generators(7, [(1, 0), (1, 1), (2, 0)])]
    again = [torch.rand(3, generator=g) for g in row_generators(7, [(1, 0), (1, 1), (2, 0)])]
    other_seed = [torch.rand(3, generator=g) for g in row_generators(8, [(1, 0)])]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    assert not torch.equal(first[0], other_seed[0])
    assert prompt_key("a") == prompt_key("a") != prompt_key("b")


@pytest.mark.parametrize("fields,message", [
    ({"top_p": 0.0}, "--top-p: must be in (0, 1]"),
    ({"top_p": 1.5}, "--top-p: must be in (0, 1]"),
    ({"temperature": -0.1}, "--temperature: must be 0 (greedy) or positive"),
    ({"temperature": math.nan}, "--temperature"),
    ({"top_k": -1}, "--top-k: must be 0 (off) or positive"),
    ({"min_p": 1.5}, "--min-p: must be in [0, 1]"),
    ({"repetition_penalty": 0.0}, "--repetition-penalty: must be positive"),
    ({"max_new_tokens": 0}, "--max-new-tokens: must be at least 1"),
    ({"seed": -1}, "--seed: must not be negative"),
    ({"stop": ("",)}, "--stop: a stop string must not be empty"),
])
def test_invalid_settings_are_refused_naming_the_flag(fields, message):
    with pytest.raises(ConfigError) as caught:
        SamplingSettings(**fields)
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        SamplingSettings(top_p=0, temperature=-1, top_k=-2)
    assert len(caught.value.problems) == 3


def test_stop_flag_syntax():
    assert parse_stop("") == ()
    assert parse_stop("\\n\\n,###") == ("\n\n", "###")
    assert parse_stop("a\\,b,c\\\\") == ("a,b", "c\\")
    assert parse_stop("\\t") == ("\t",)
    with pytest.raises(ValueError, match="unknown escape"):
        parse_stop("\\x")
    with pytest.raises(ValueError, match="empty stop string"):
        parse_stop("a,,b")
