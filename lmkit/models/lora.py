"""LoRA: low-rank adapters on a transformer's projection matrices (Hu et al. 2021).

``W x`` becomes ``W x + (alpha / r) * B A x`` with ``A`` (r, in) and ``B`` (out, r); ``B`` starts
at zero, so the adapted model starts equal to the base model. Only ``A`` and ``B`` train. Merging
folds ``(alpha / r) * B A`` into ``W``: the result is a plain model with the same outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The projections adapted in every block: attention (qkv, out_proj) and feed-forward (gate, up, down).
TARGETS = ("qkv", "out_proj", "gate", "up", "down")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base, self.rank, self.alpha = base, rank, alpha
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initializes, and as peft does
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_a.t() @ self.lora_b.t()  # (..., out)
        return self.base(x) + update * self.scale

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight is ``W + scale * B A`` (computed in float32)."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                           device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_b.float() @ self.lora_a.float()) * self.scale
            merged.weight.copy_((self.base.weight.float() + delta).to(self.base.weight.dtype))
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for module in model.modules():
        for name in TARGETS:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear) and name in module._modules:
                found.append((module, name, child))
    return found


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> int:
    """Wrap every target projection in ``model`` and freeze all other parameters; returns how many
    projections were wrapped (0 means the model has none, e.g. an LSTM)."""
    targets = _targets(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parent, name, linear in targets:
        setattr(parent, name, LoRALinear(linear, rank, alpha, dropout))
    return len(targets)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear in ``model`` by its merged Linear, in place; returns the model."""
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(module, LoRALinear) for module in model.modules())
