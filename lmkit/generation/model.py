"""Loading a checkpoint's model for inference: what it does, on which device, in which precision."""

from __future__ import annotations

import torch
from torch import nn

from lmkit.checkpoint import Checkpoint
from lmkit.devices import can_compile, resolve_device
from lmkit.errors import UserError
from lmkit.generation.quantize import QUANTIZATIONS, quantize_int8
from lmkit.progress import reporter

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --compile auto for a generation job: this many new tokens pay for a cold compile. Measured on 2 CPU cores
# (gpt-small, fp32): the compile costs up to 15 s cold and 3 s warm, and saves 0.9 ms a token at batch 1 and
# 0.2 ms a token at batch 8 (break-even at 15,000 and 70,000 tokens from a cold cache).
COMPILE_AUTO_TOKENS = 50_000


def load_model(checkpoint: Checkpoint, device: str | torch.device = "cpu", precision: str = "fp32",
               quantize: str | None = None) -> nn.Module:
    """The checkpoint's model in eval mode, LoRA adapters merged, on ``device`` in ``precision`` (fp32,
    bf16), optionally with int8 Linear layers."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if quantize not in (None, *QUANTIZATIONS):
        raise UserError(f"--quantize: {quantize!r} is not one of none, {', '.join(QUANTIZATIONS)}")
    device = resolve_device(device)
    model = checkpoint.inference_model().to(device=device, dtype=PRECISIONS[precision])
    if quantize == "int8":
        quantized, total = quantize_int8(model)
        reporter.detail(f"int8: {quantized:,} of {total:,} parameters quantized (the Linear layers' weights)")
        if checkpoint.model_config.arch == "lstm":
            reporter.warn("--quantize int8: an LSTM's recurrent weights stay in float; only its output "
                          "projection is quantized")
    return model


def compile_choice(requested: bool | None, checkpoint: Checkpoint, device: str | torch.device,
                   quantize: str | None, new_tokens: float) -> bool:
    """--compile, --no-compile, or auto for a text model's decoding step: a transformer without int8 layers,
    where torch can compile, for a job of at least COMPILE_AUTO_TOKENS new tokens (``new_tokens``: prompts x
    max_new_tokens; a server's job has no end: math.inf)."""
    if requested is not None:
        return requested
    return (checkpoint.model_config.arch == "gpt" and quantize is None and new_tokens >= COMPILE_AUTO_TOKENS
            and can_compile(resolve_device(device)))
