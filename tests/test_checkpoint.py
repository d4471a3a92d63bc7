"""lmkit.checkpoint.read_reference: the one check of every --reference (DPO, GRPO's KL term, evaluate's implicit
reward)."""

import pytest

from lmkit.checkpoint import read_checkpoint, read_reference
from lmkit.errors import UserError


def test_a_reference_is_a_causal_model_over_the_same_tokens_and_context(bases):
    model = read_checkpoint(bases["gpt"])
    assert read_reference(str(bases["lstm"]), model, "why").path == read_checkpoint(bases["lstm"]).path
    with pytest.raises(UserError, match=rf"--reference {bases['bert']}: a bert lm checkpoint \(mlm\); the reference "
                                        "is a causal language model"):
        read_reference(str(bases["bert"]), model, "why")
    block = model.model_config.block_size
    with pytest.raises(UserError, match=rf"--reference {bases['gpt']}: its block size {block} is below --seq-len "
                                        rf"{block + 1}$"):
        read_reference(str(bases["gpt"]), model, "why", block + 1, "--seq-len")
