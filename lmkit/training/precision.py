"""``--precision auto`` for a training run on a CPU that computes bf16 natively: whichever of bf16 autocast and
fp32 runs this model's training step faster on this machine, measured on the run's own first batch.

Autocast casts every weight to bf16 at each step, a cost that grows with the weights and not with the tokens:
for the small batches of short texts a finetuning run reads, a small model's casts can outweigh its faster
bf16 matmuls (all-MiniLM-L6-v2, 8 texts of 50 tokens on 2 cores: bf16 about 1.3x slower), while pretraining's
large batches gain from bf16. The choice is measured once per machine, thread count, torch version, model
and tokens per micro-batch, and kept in lmkit's cache directory; every rank uses rank 0's.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
from torch import nn

from lmkit.devices import cached_measurement, processor_name, resolve_precision
from lmkit.models import count_parameters
from lmkit.training.distributed import Distributed, sum_across_ranks
from lmkit.training.objectives import Objective

REPEATS = 1  # timed forward-backward passes per precision in each of two alternating rounds, after one to warm up


def training_precision(requested: str, model: nn.Module, objective: Objective, micro_batch: int,
                       env: Distributed, started_in: str | None = None, sharded: bool = False) -> tuple[str, str]:
    """The precision to train in, and why (for the run's first line). ``started_in``: the precision a resumed run
    started in, which auto keeps (a new measurement could pick the other); ``sharded``: the model will be sharded,
    whose forward is collective, so auto is the hardware's default, not measured."""
    native = resolve_precision(requested, env.device)
    if requested != "auto":
        return requested, "--precision"
    if started_in in ("bf16", "fp32"):
        return started_in, "auto: as the run started"
    if env.device.type != "cpu" or native == "fp32":
        return native, "auto: " + ("bf16 on this GPU" if native == "bf16" else "no native bf16 here")
    if sharded:
        return native, "auto (--shard: not measured)"
    tokens = objective.tokens_per_sample * micro_batch
    bucket = 1 << max(4, round(math.log2(max(tokens, 1))))
    key = "|".join([processor_name(env.device), str(torch.get_num_threads()), torch.__version__,
                    type(model).__name__, str(count_parameters(model)), str(bucket)])
    # Rank 0 measures (or reads its cache) and every rank takes its choice: ranks measuring on their own cores
    # could disagree, and would slow each other down while they measure.
    measured = (cached_measurement("training-precision.json", key, lambda: _measure(model, objective),
                                   lambda value: isinstance(value, dict) and set(value) == {"bf16", "fp32"})
                if env.is_main else None)
    first = torch.tensor(float(measured["bf16"] < measured["fp32"]) if measured is not None else 0.0,
                         device=env.device)
    chosen = "bf16" if sum_across_ranks(first, env).item() > 0 else "fp32"
    if measured is None:
        return chosen, "auto: rank 0's measurement"
    return chosen, (f"auto: faster for this model here ({measured['bf16'] * 1e3:.0f} ms a step in bf16, "
                    f"{measured['fp32'] * 1e3:.0f} in fp32)")


def _measure(model: nn.Module, objective: Objective) -> dict[str, float]:
    """Best seconds of a forward and backward of the first training batch in each precision, alternating. The
    run's RNG (dropout) and gradients are left as they were."""
    batch = objective.train_batch(0, 0, 0)
    best = {"bf16": math.inf, "fp32": math.inf}
    with torch.random.fork_rng(devices=[]):
        for name in ("fp32", "bf16") * 2:  # alternating: a neighbour's load slows both alike
            context = torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else nullcontext()
            for attempt in range(REPEATS + 1):
                started = time.perf_counter()
                with context:
                    loss = objective.loss(model, batch)
                loss.backward()
                if attempt:  # the first of each: kernel selection, allocations
                    best[name] = min(best[name], time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    return best
