"""int8 quantization of a model's Linear layers for inference (``--quantize int8``).

Weights are stored as int8 with one scale per output channel (symmetric absmax / 127). On CPU the
matmul is dynamic int8 as in LLM.int8 without its outlier split (Dettmers et al. 2022) and PyTorch's
dynamic quantization: each input row is quantized to int8 with its own scale at run time and multiplied
in integers (``torch._int_mm``, int32 accumulation). Elsewhere the weights are dequantized per matmul
(weight-only int8: a quarter of the weight memory, same compute).

Written here rather than with ``torch.ao.quantization.quantize_dynamic``: torch 2.13 deprecates it
(and its quantized tensor types) in favour of torchao, which lmkit does not depend on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATIONS = ("int8",)


def _absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of each row of x (N, K): (int8 values (N, K), float32 scales (N, 1))."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # (N, 1)
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights and one float scale per output channel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _absmax_int8(linear.weight.detach().float())
        self.register_buffer("weight_t", weight.t().contiguous())  # (in, out): _int_mm's layout
        self.register_buffer("scale", scale.squeeze(1))  # (out,)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        # Integer matmuls where torch has a kernel for them (CPU, any shape); weight-only elsewhere.
        self.dynamic = linear.weight.device.type == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()  # (N, in)
        if self.dynamic:
            quantized, row_scale = _absmax_int8(rows)  # (N, in) int8, (N, 1)
            y = torch._int_mm(quantized, self.weight_t).float() * row_scale * self.scale  # (N, out)
        else:
            y = F.linear(rows, self.weight_t.t().float()) * self.scale  # (N, out)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"{'dynamic' if self.dynamic else 'weight-only'} int8"


def quantize_int8(model: nn.Module) -> tuple[int, int]:
    """Replace every nn.Linear of ``model`` by an Int8Linear, in place. A tied output projection becomes a
    separate int8 copy (the embedding stays in float: it is a lookup, not a matmul).

    Returns (parameters now int8, parameters in all): an LSTM's recurrent weights, the embeddings and
    the norms stay in float.
    """
    total = sum(p.numel() for p in model.parameters())
    quantized = 0
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
                quantized += child.weight.numel()
    return quantized, total
