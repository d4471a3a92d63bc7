"""``--device`` for the commands that run a model for use (generate, evaluate): one resolver, one set
of messages. (Training stages pick their device from the process layout: see training/distributed.py.)"""

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
