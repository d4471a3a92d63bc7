"""The loss every language model computes: cross entropy of its output projection over the vocabulary.

Two ways to the same number. ``token_loss`` takes logits the caller already has (evaluation, distillation,
anything that reads them). ``linear_cross_entropy`` is what training uses: it takes the hidden states and
the output matrix and never holds the float32 logits of the whole batch. The vocabulary projection is the
largest activation of a small model (B x T x V: 4096 x 8192 floats for gpt-small at micro-batch 16), and
writing it in float32, its log-softmax and their gradients in turn cost a third of a CPU training step.
Here the logits are made a chunk of rows at a time, turned into their gradient (softmax - one-hot) while
they are still in cache, and stored in the compute dtype; the two backward matmuls then run once over the
whole batch. The idea is the fused linear cross entropy of Liger-Kernel (Hsu et al. 2024) and of Wijmans
et al. 2024 ("Cut your losses"); this is a plain-PyTorch version of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmkit.vocab import IGNORE_INDEX

# Rows per chunk: a chunk's float32 logits should stay in a CPU's cache (measured on a 2-core Sapphire Rapids:
# 4-8 MB chunks ran best, 32 MB ones 10% slower); a GPU has the memory for far larger chunks.
_CHUNK_BYTES = {"cpu": 4 << 20}
_DEFAULT_CHUNK_BYTES = 256 << 20


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of logits (B, T, V) over the targets (B, T) that are not IGNORE_INDEX.

    Computed in float32 whatever the logits' dtype (bf16 log-softmax over a large vocabulary is lossy).
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


@torch.compiler.disable  # a loop over chunks: torch.compile would unroll it; it runs as it is, between graphs
def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor) -> torch.Tensor:
    """``token_loss(F.linear(hidden, weight, bias), targets)`` without the full logits: hidden (..., C),
    weight (V, C), bias (V,) or None, targets (...) with IGNORE_INDEX where nothing is predicted.

    Under autocast the matmuls run in the autocast dtype, as ``F.linear`` would; the softmax and the loss
    are float32. Rows without a target cost nothing (masked LM predicts 15% of them).
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    chosen = targets != IGNORE_INDEX
    if not bool(chosen.all()):
        hidden, targets = hidden[chosen], targets[chosen]
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):  # validation: the loss alone
        with torch.autocast(device, enabled=False):
            return _summed_loss(hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                                targets) / max(len(targets), 1)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, dtype)


def _chunk_rows(vocab: int, device: torch.device) -> int:
    return max(1, _CHUNK_BYTES.get(device.type, _DEFAULT_CHUNK_BYTES) // (4 * vocab))


def _summed_loss(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """The summed cross entropy, a chunk of rows at a time, with no gradient kept."""
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    chunk = _chunk_rows(w.shape[0], h.device)
    for start in range(0, h.shape[0], chunk):
        rows, t = h[start:start + chunk], targets[start:start + chunk]
        logits = (rows @ w.t() if b is None else torch.addmm(b, rows, w.t())).float()  # (c, V)
        total += (torch.logsumexp(logits, dim=-1) - logits.gather(1, t[:, None]).squeeze(1)).sum()
    return total


_workspaces: dict[tuple, torch.Tensor] = {}


def _workspace(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (rows, vocab) buffer of the logits' gradient, kept from step to step. It lives only inside one
    forward (both gradients are computed from it there), so one buffer serves every step; a fresh one each
    step is the largest allocation of a small model's step, and on a CPU the kernel maps and zeroes its pages
    anew every time (32,000 page faults a step for 4,096 x 8,000 floats; reusing it gave gpt-tiny +17% tokens/s
    on 2 cores)."""
    key = (dtype, device)
    buffer = _workspaces.get(key)
    if buffer is None or buffer.numel() < rows * vocab:
        _workspaces.clear()  # one buffer at a time: the largest step's
        buffer = _workspaces[key] = torch.empty(rows * vocab, dtype=dtype, device=device)
    return buffer[:rows * vocab].view(rows, vocab)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross entropy of ``hidden @ weight.T + bias`` against ``targets`` (every row has one), when a
    gradient is wanted (``linear_cross_entropy`` computes the loss alone otherwise).

    The gradients are computed in the forward pass, where the softmax is at hand (the loss is the graph's
    last node, so nothing is wasted); backward scales them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        if n_rows == 0:  # nothing to predict: a zero loss that still reaches the weights
            ctx.empty = True
            ctx.save_for_backward(hidden, weight, bias)
            return hidden.new_zeros((), dtype=torch.float32)
        ctx.empty = False
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            chunk = _chunk_rows(vocab, h.device)
            # d(mean loss)/d(logits), in the compute dtype: the backward matmuls then run once over all rows.
            grad_logits = _workspace(n_rows, vocab, dtype, h.device)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for start in range(0, n_rows, chunk):
                rows, t = h[start:start + chunk], targets[start:start + chunk]
                logits = rows @ w.t() if b is None else torch.addmm(b, rows, w.t())  # (c, V)
                x = logits.float()  # a copy under autocast; in place below either way
                lse = torch.logsumexp(x, dim=-1)  # (c,)
                total += (lse - x.gather(1, t[:, None]).squeeze(1)).sum()
                probs = x.sub_(lse[:, None]).exp_()  # (softmax - one-hot) / rows
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                grad_logits[start:start + chunk] = probs.mul_(1.0 / n_rows)
            grad_hidden = (grad_logits @ w).to(hidden.dtype) if ctx.needs_input_grad[0] else None
            grad_weight = (grad_logits.t() @ h).to(weight.dtype) if ctx.needs_input_grad[1] else None
            grad_bias = grad_logits.float().sum(0).to(bias.dtype) if ctx.needs_input_grad[2] else None
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total / n_rows

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if ctx.empty:
            hidden, weight, bias = ctx.saved_tensors
            zeros = [torch.zeros_like(t) if t is not None and need else None
                     for t, need in zip((hidden, weight, bias), ctx.needs_input_grad[:3])]
            return (*zeros, None, None)
        grads = [None if g is None else g * grad_output.to(g.dtype) for g in ctx.saved_tensors]
        return (*grads, None, None)
