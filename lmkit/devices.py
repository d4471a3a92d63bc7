"""``--device`` for the commands that run a model for use (generate, evaluate): one resolver, one set
of messages; and the precision every stage runs in. (Training stages pick their device from the process layout: see training/distributed.py.)"""

from __future__ import annotations

import torch

from lmkit.errors import UserError


def resolve_device(requested: str | torch.device) -> torch.device:
    """The torch device for ``--device`` (auto: CUDA when available, else CPU)."""
    if str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UserError(f"--device: {requested!r} is not a device (cpu, cuda, cuda:1, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine (use cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: lmkit runs on cpu or cuda")
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """bf16 where the hardware computes it natively (CUDA bf16, or AVX-512 BF16 / AMX CPUs), else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"
