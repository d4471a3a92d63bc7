"""The public API on real checkpoints: seeds, batches, stop strings, streaming, SFT templates, long and
empty prompts, int8, and checkpoints that do not generate text."""

import pytest
import torch

from lmkit.checkpoint import read_checkpoint
from lmkit.data.instructions import render_prompt
from lmkit.errors import UserError
from lmkit.generation import Generator, SamplingSettings
from tests.generation import checkpoints

PROMPTS = ["The for statement", "An exception", "Names refer to objects", "x"]
SAMPLED = SamplingSettings(max_new_tokens=16, temperature=1.0, seed=5)
GREEDY = SamplingSettings(max_new_tokens=16, temperature=0)


@pytest.fixture(scope="module")
def generator(gpt):
    return Generator(read_checkpoint(gpt))


def test_same_seed_same_text_and_another_seed_other_text(generator):
    first = generator.generate(PROMPTS, SAMPLED)
    assert generator.generate(PROMPTS, SAMPLED) == first
    other = generator.generate(PROMPTS, SamplingSettings(max_new_tokens=16, temperature=1.0, seed=6))
    assert other != first
    assert len(set(first)) == len(first)  # different prompts draw independently


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_batched_equals_one_by_one(gpt, settings):
    generator = Generator(read_checkpoint(gpt), batch_size=3)
    generator.model.double()  # float64: the padded batch and the lone prompt then round alike
    batched = generator.generate(PROMPTS, settings)
    assert batched == [generator.generate([prompt], settings)[0] for prompt in PROMPTS]


def test_copies_of_a_prompt_are_distinct_samples_and_the_first_is_the_lone_sample(generator):
    copies = generator.generate(["The for statement"] * 3, SAMPLED)
    assert len(set(copies)) == 3
    assert copies[0] == generator.generate(["The for statement"], SAMPLED)[0]


def test_a_stop_string_ends_the_completion_exactly_before_it(generator):
    settings = SamplingSettings(max_new_tokens=24, temperature=1.0, seed=1)
    full = generator.generate(["The for statement"], settings)[0]
    windows = [full[i:i + 2] for i in range(len(full) // 2, len(full) - 1)]
    stop = next(w for w in windows if w.strip() and "\ufffd" not in w)  # two settled characters, mid-text
    cut = generator.generate(["The for statement"], SamplingSettings(**{**settings.__dict__, "stop": (stop,)}))[0]
    assert cut == full[:full.index(stop)]


def test_streamed_pieces_add_up_to_the_result(generator):
    pieces = []
    result = generator.generate(["An exception"], SAMPLED, on_token=lambda index, text: pieces.append((index, text)))
    assert "".join(text for _, text in pieces) == result[0] and {index for index, _ in pieces} == {0}


def test_a_causal_prompt_follows_the_document_separator_and_sft_uses_the_template(gpt, tmp_path, generator):
    assert generator.encode_prompt("hello") == [3, *generator.tokenizer.encode("hello")]
    template = "Q: {prompt}\nA:"
    sft = Generator(read_checkpoint(checkpoints.sft(gpt, tmp_path / "sft", template)))
    expected = sft.tokenizer.encode(render_prompt(template, "hello"))
    assert sft.encode_prompt("hello") == expected
    seen = []
    encode = sft.model.encode
    sft.model.encode = lambda idx, **kwargs: seen.append(idx.tolist()) or encode(idx, **kwargs)
    sft.generate(["hello"], GREEDY)
    assert seen[0] == [expected]  # the model read the templated prompt


def test_a_prompt_longer_than_the_context_keeps_its_end_with_a_warning(generator, capsys):
    block = generator.block_size
    long_prompt = " ".join(["word"] * (2 * block))
    ids = generator.encode_prompt(long_prompt, "prompt 1")
    assert len(ids) == block - 1 and ids == [3, *generator.tokenizer.encode(long_prompt)][-(block - 1):]
    assert "prompt 1: " in capsys.readouterr().err
    completion = generator.generate([long_prompt], GREEDY)[0]
    err = capsys.readouterr().err
    assert f"kept its last {block - 1} tokens" in err
    assert "stopped at the model's context" in err  # one position was left: one new token at most
    assert len(generator.tokenizer.encode(completion)) <= 2


def test_a_long_prompt_is_refused_with_truncate_error(gpt):
    strict = Generator(read_checkpoint(gpt), truncate="error")
    with pytest.raises(UserError, match="prompt 1: .* tokens, more than the model's context allows"):
        strict.generate([" ".join(["word"] * 500)], GREEDY)


def test_an_empty_prompt_is_refused(generator):
    with pytest.raises(UserError, match="prompt 2: is empty"):
        generator.generate(["fine", "  "], GREEDY)


def test_the_lstm_generates_too(lstm):
    generator = Generator(read_checkpoint(lstm))
    first = generator.generate(PROMPTS, SAMPLED)
    assert first == generator.generate(PROMPTS, SAMPLED) and all(isinstance(t, str) for t in first)


def test_int8_stays_close_to_full_precision(gpt):
    checkpoint = read_checkpoint(gpt)
    full, int8 = Generator(checkpoint), Generator(checkpoint, quantize="int8")
    idx = torch.tensor([full.encode_prompt("The for statement is used to iterate")])
    with torch.no_grad():
        reference = torch.log_softmax(full.model(idx)[0].float(), dim=-1)
        quantized = torch.log_softmax(int8.model(idx)[0].float(), dim=-1)
    # Mean KL(full || int8) per position: tiny against the entropy of the prediction.
    kl = (reference.exp() * (reference - quantized)).sum(-1).mean()
    assert 0 < kl < 1e-3
    assert len(int8.generate(PROMPTS, GREEDY)) == len(PROMPTS)


def test_checkpoints_that_do_not_generate_text_are_refused(bert):
    with pytest.raises(UserError, match="does not generate text"):
        Generator(read_checkpoint(bert))


def test_bf16_weights_and_cache(gpt):
    generator = Generator(read_checkpoint(gpt), precision="bf16")
    assert generator.model.tok_emb.weight.dtype == torch.bfloat16
    assert generator.model.new_cache(1, 4).layers[0].keys.dtype == torch.bfloat16
    first = generator.generate(PROMPTS, SAMPLED)
    assert first == generator.generate(PROMPTS, SAMPLED) and len(first) == len(PROMPTS)
