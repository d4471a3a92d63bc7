"""``lmkit pretrain --budget 15m`` (or ``--budget-flops``): the model size, tokens, batch and learning rate
for that much compute on this machine and this dataset.

The rule. Models of a family scale along one dial, as nanochat's depth: ``k`` blocks of width ``64 k``
(64-wide heads). For a compute budget C (``--budget-flops``, or the time budget times the FLOP/s a short
probe of training steps measures here), the dial minimizes a scaling law's predicted loss

    L(N, D) = E + A / N^alpha + B / D'^beta        (Hoffmann et al. 2022, "Chinchilla", approach 3 fit)

over models of N non-embedding parameters (Kaplan et al. 2020: the count that scales cleanly at small
sizes) trained on D = C / FLOPs-per-token tokens, where the FLOPs count everything a step computes (the
output projection too). Data that has to be repeated is worth less: with U unique tokens in the train
split, D tokens are worth D' = U + U R* (1 - exp(-R / R*)) with R = D / U - 1 repetitions and R* = 15.4
(Muennighoff et al. 2023, "Scaling Data-Constrained Language Models"), so a small dataset pushes the
choice to a larger model trained for fewer epochs. The dial is continuous; the model built is the largest
of a ladder (whole depths, widths in steps of 32) that is no larger and no costlier per token than the
optimum, and the token count is the optimum's, so a larger budget never picks a smaller model or fewer
tokens, and the run never needs more compute than the budget (it may need a little less).

The batch grows with the tokens (about 400 optimizer steps, 8 to 128 sequences), the learning rate falls
with the width (0.5 / d_model, between 3e-4 and 3e-3). Every flag given explicitly wins over the dial.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmkit.config import given_fields
from lmkit.errors import UserError

# Chinchilla's fitted law (Hoffmann et al. 2022, eq. 10) and Muennighoff et al.'s repetition constant.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
R_STAR = 15.4
WIDTH_PER_BLOCK = 64
MAX_DEPTH = 16
SEQ_LEN = 256
TARGET_STEPS = 400
BATCH_RANGE = (8, 128)          # sequences per optimizer step
MICRO_BATCH = 16
TIME_SHARE = 0.9                # of the time left after the probe: the rest for evaluation and checkpoints
# What the dial sets, each only when the user did not: these flags win.
FIELDS = ("n_layer", "n_head", "d_model", "block_size", "max_steps", "micro_batch", "batch_tokens", "accumulation",
          "lr", "warmup_steps", "max_time", "compile")


@dataclass(frozen=True)
class Choice:
    depth: int            # blocks
    width: int
    tokens: int           # training tokens
    optimum: float        # the continuous depth that minimizes the law
    predicted_loss: float
    epochs: float         # tokens / unique training tokens
    compute: float        # FLOPs the choice spends (<= the budget)


def non_embedding_parameters(depth: float, mlp_ratio: float = 12.0) -> float:
    """Attention (4 d^2) and feed-forward (8 d^2 for 4x GELU; SwiGLU's 3 matrices at 8/3 d are the same) per block."""
    width = WIDTH_PER_BLOCK * depth
    return mlp_ratio * depth * width * width


def flops_per_token(depth: float, vocab_size: int, seq_len: int = SEQ_LEN) -> float:
    """Training FLOPs per token: 6 x (non-embedding parameters + the output projection) + attention."""
    width = WIDTH_PER_BLOCK * depth
    return 6.0 * (non_embedding_parameters(depth) + vocab_size * width) + 12.0 * depth * width * seq_len


def effective_tokens(tokens: np.ndarray | float, unique: float) -> np.ndarray | float:
    """D': repeated tokens count less (Muennighoff et al. 2023, eq. 5)."""
    repeats = np.maximum(np.asarray(tokens, dtype=np.float64) / unique - 1.0, 0.0)
    return np.where(repeats > 0, unique + unique * R_STAR * (1.0 - np.exp(-repeats / R_STAR)), tokens)


def predicted_loss(parameters: np.ndarray | float, tokens: np.ndarray | float, unique: float) -> np.ndarray:
    return E + A / np.power(parameters, ALPHA) + B / np.power(effective_tokens(tokens, unique), BETA)


def choose(compute: float, unique_tokens: int, vocab_size: int, seq_len: int = SEQ_LEN) -> Choice:
    """The dial's choice for ``compute`` FLOPs on ``unique_tokens`` of training data (pure: no probe)."""
    if compute <= 0 or unique_tokens <= 0:
        raise ValueError("compute and unique tokens must be positive")
    depths = np.linspace(1.0, MAX_DEPTH, 1501)
    tokens = compute / flops_per_token(depths, vocab_size, seq_len)
    losses = predicted_loss(non_embedding_parameters(depths), tokens, unique_tokens)
    best = int(np.argmin(losses))
    optimum = float(depths[best])
    depth, width = _shape_at_most(optimum, vocab_size, seq_len)
    chosen_tokens = int(tokens[best])
    return Choice(depth, width, chosen_tokens, optimum, float(losses[best]), chosen_tokens / unique_tokens,
                  chosen_tokens * shape_flops_per_token(depth, width, vocab_size, seq_len))


def shape_parameters(depth: int, width: int) -> float:
    return 12.0 * depth * width * width


def shape_flops_per_token(depth: int, width: int, vocab_size: int, seq_len: int = SEQ_LEN) -> float:
    return 6.0 * (shape_parameters(depth, width) + vocab_size * width) + 12.0 * depth * width * seq_len


def _shape_at_most(optimum: float, vocab_size: int, seq_len: int) -> tuple[int, int]:
    """The largest model (by non-embedding parameters) of the ladder that is no larger and no costlier per token
    than the continuous optimum: depths 1..MAX_DEPTH, widths in steps of 32 within a block of 64 per layer."""
    limit_n = non_embedding_parameters(optimum) * (1 + 1e-9)
    limit_f = flops_per_token(optimum, vocab_size, seq_len) * (1 + 1e-9)
    best = (1, 32)
    for depth in range(1, MAX_DEPTH + 1):
        for width in range(32 * max(1, 2 * depth - 2), 32 * (2 * depth + 2) + 1, 32):
            n = shape_parameters(depth, width)
            if (n <= limit_n and shape_flops_per_token(depth, width, vocab_size, seq_len) <= limit_f
                    and n > shape_parameters(*best)):
                best = (depth, width)
    return best


def heads(width: int) -> int:
    """64-wide heads, or 32-wide where the width is an odd multiple of 32."""
    return width // 64 if width % 64 == 0 else width // 32


def batch_sequences(tokens: int, seq_len: int) -> int:
    """Sequences per optimizer step: a power of two near tokens / (seq_len x TARGET_STEPS), within BATCH_RANGE."""
    wanted = max(1.0, tokens / (seq_len * TARGET_STEPS))
    return int(min(max(2 ** int(math.floor(math.log2(wanted))), BATCH_RANGE[0]), BATCH_RANGE[1]))


def learning_rate(width: int) -> float:
    return float(min(max(0.5 / width, 3e-4), 3e-3))


# -- applying it to a pretrain config ---------------------------------------------------------------------------
def apply(config: Any) -> Any:
    """``config`` with the budget's choices for the fields the user did not give, and ``budget_plan`` (a dict
    for the run's stats and first lines). Without --budget or --budget-flops, ``config`` unchanged."""
    if not (config.budget or config.budget_flops) or getattr(config, "budget_plan", None) is not None:
        return config
    from lmkit import artifacts
    from lmkit.models.presets import PRESETS

    given = given_fields(config)
    if PRESETS.get(config.model, {}).get("arch") == "lstm":
        raise UserError(f"--budget: sizes transformers along depth and width; --model {config.model} is an LSTM")
    datasets = [artifacts.load(path, kind="dataset") for path in config.dataset]  # a mixture: their tokens together
    unique = sum(int(dataset.stats["splits"]["train"]["tokens"]) for dataset in datasets)
    vocab = int(datasets[0].stats["vocab_size"])
    if not unique:
        raise UserError(f"{', '.join(config.dataset)}: --budget: the train split has no tokens")
    saved = _saved_choice(config)
    if saved is not None:  # a resumed run keeps the choice it started with (a new probe could choose another)
        values = {key: value for key, value in saved.items() if key not in given}
        return _with_plan(dataclasses.replace(config, **values), {"resumed": True, "chosen": values})
    seq_len = config.seq_len or SEQ_LEN
    started = time.monotonic()
    probe: dict[str, Any] = {}
    if config.budget_flops:
        compute = float(config.budget_flops)
    else:
        from lmkit.units import parse_duration

        seconds = parse_duration(config.budget)
        compiled = _compiles(config, given, seconds)
        guess = choose(_assumed_rate(config) * seconds, unique, vocab, seq_len)  # a first guess to probe, eager
        rate = _probe(config, guess.depth, guess.width, vocab, seq_len, compiled=False)
        compute = rate * seconds * TIME_SHARE
        probed = guess
        if compiled:  # the run's speed is the compiled one: probe the model it will train, compiled (which
            # also fills torch's compile cache for the run)
            probed = choose(compute, unique, vocab, seq_len)
            rate = _probe(config, probed.depth, probed.width, vocab, seq_len, compiled=True)
        spent = time.monotonic() - started
        compute = rate * max(seconds - spent, 0.0) * TIME_SHARE
        probe = {"flops_per_s": rate, "probe_depth": probed.depth, "probe_width": probed.width,
                 "probe_compiled": compiled, "probe_seconds": round(spent, 2)}
        if compute <= 0:
            raise UserError(f"--budget {config.budget}: the throughput probe alone took {spent:.0f} s; give more time")
        if "compile" not in given:
            config = dataclasses.replace(config, compile=compiled)
            probe["compile"] = compiled
    choice = choose(compute, unique, vocab, seq_len)
    batch = batch_sequences(choice.tokens, seq_len)
    micro = min(MICRO_BATCH, batch) if "micro_batch" not in given else config.micro_batch
    steps = max(1, math.ceil(choice.tokens / (batch * seq_len)))
    values: dict[str, Any] = {
        "n_layer": choice.depth, "d_model": choice.width, "n_head": heads(choice.width),
        "block_size": max(seq_len, config.block_size or 0), "max_steps": steps, "micro_batch": micro,
        "lr": learning_rate(choice.width), "warmup_steps": max(10, min(100, steps // 20)),
    }
    if "batch_tokens" not in given and "accumulation" not in given:
        values["batch_tokens"] = batch * seq_len if batch % micro == 0 else 0
    if config.budget and "max_time" not in given:
        values["max_time"] = config.budget  # a safety stop: the steps were sized to end well before it
    values = {key: value for key, value in values.items() if key not in given}
    plan = {"budget": config.budget or f"{config.budget_flops:.3g} FLOPs", "compute_flops": compute,
            "unique_tokens": unique, "depth": choice.depth, "width": choice.width,
            "optimum_depth": round(choice.optimum, 2), "tokens": choice.tokens, "epochs": round(choice.epochs, 2),
            "predicted_loss": round(choice.predicted_loss, 4), "batch_sequences": batch, "steps": steps, **probe,
            "chosen": values, "kept": sorted(given & set(FIELDS))}
    _describe(plan, vocab, seq_len)
    return _with_plan(dataclasses.replace(config, **values), plan)


def _describe(plan: dict[str, Any], vocab: int, seq_len: int) -> None:
    from lmkit.progress import reporter

    speed = ""
    if "flops_per_s" in plan:
        speed = (f"; the probe measured {plan['flops_per_s'] / 1e9:,.0f} GFLOP/s (depth {plan['probe_depth']}, "
                 f"width {plan['probe_width']}, {'compiled' if plan['probe_compiled'] else 'eager'}; "
                 f"{plan['probe_seconds']} s)")
    reporter.info(f"--budget {plan['budget']}: {plan['compute_flops']:.3g} training FLOPs{speed}")
    params = shape_parameters(plan["depth"], plan["width"])
    reporter.info(f"--budget: depth {plan['depth']}, width {plan['width']} ({params / 1e6:.2f} M non-embedding "
                  f"parameters), {plan['tokens']:,} tokens = {plan['epochs']:g} epochs of the train split's "
                  f"{plan['unique_tokens']:,} ({plan['tokens'] / max(params, 1):.0f} tokens per parameter); "
                  f"{plan['steps']:,} steps of {plan['batch_sequences']} x {seq_len} tokens: the Chinchilla loss "
                  f"law with repeated epochs discounted (Muennighoff et al.) is lowest at depth "
                  f"{plan['optimum_depth']}")
    if plan["kept"]:
        reporter.info("--budget: kept the flags you gave: "
                      f"{', '.join('--' + k.replace('_', '-') for k in plan['kept'])}")


def _with_plan(config: Any, plan: dict[str, Any]) -> Any:
    object.__setattr__(config, "budget_plan", plan)
    return config


def _saved_choice(config: Any) -> dict[str, Any] | None:
    """The budget's choices recorded in a run directory that is to be resumed, for the same budget."""
    path = Path(config.out) / "config.toml"
    if not config.resuming or not path.is_file():
        return None
    from lmkit.config import load_toml

    saved = load_toml(path)
    if saved.get("budget", "") != config.budget or float(saved.get("budget_flops", 0.0)) != config.budget_flops:
        return None
    return {key: saved[key] for key in FIELDS if key in saved}


def _assumed_rate(config: Any) -> float:
    """A first FLOP/s guess (to pick the probe's model): a tenth of the device's matmul peak."""
    from lmkit.devices import peak_flops, resolve_device, resolve_precision

    device = resolve_device("auto")
    return 0.1 * peak_flops(device, resolve_precision(config.precision, device))


def _compiles(config: Any, given: set[str], seconds: float) -> bool:
    """Whether a --budget run compiles: --compile/--no-compile, else when the budget is long enough for
    ``--compile auto`` (training.options) and torch can compile here."""
    if "compile" in given and config.compile is not None:
        return bool(config.compile)
    from lmkit.devices import can_compile, resolve_device
    from lmkit.training.options import COMPILE_AUTO_MINUTES

    return seconds >= 60 * COMPILE_AUTO_MINUTES and can_compile(resolve_device("auto"))


def _probe(config: Any, depth: int, width: int, vocab: int, seq_len: int, compiled: bool, steps: int = 3) -> float:
    """Measured training FLOP/s (as ``shape_flops_per_token`` counts them) of a model of ``depth`` x ``width`` on
    random tokens: a warm-up step (the compile, when ``compiled``), then ``steps`` timed AdamW steps of MICRO_BATCH
    sequences, in the run's precision."""
    import torch

    from lmkit.devices import resolve_device, resolve_precision
    from lmkit.models import build_model
    from lmkit.models.presets import model_config
    from lmkit.vocab import IGNORE_INDEX

    device = resolve_device("auto")
    precision = resolve_precision(config.precision, device)
    cfg = model_config(config.model, vocab, n_layer=depth, d_model=width, n_head=heads(width),
                       block_size=max(seq_len, config.block_size or 0))
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if compiled else model
    idx = torch.randint(0, vocab, (MICRO_BATCH, seq_len), generator=generator)
    targets = torch.roll(idx, -1, dims=1)
    if cfg.arch == "bert":  # masked LM predicts about 15% of the positions
        targets = torch.where(torch.rand(idx.shape, generator=generator) < 0.15, idx, IGNORE_INDEX)
    idx, targets = idx.to(device), targets.to(device)
    context = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16"
               else torch.autocast(device_type=device.type, enabled=False))
    timings = []
    for step in range(steps + 1):
        started = time.perf_counter()
        with context:
            _, loss = step_model(idx, targets, return_logits=False)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            timings.append(time.perf_counter() - started)
    tokens_per_s = MICRO_BATCH * seq_len / min(timings)
    return tokens_per_s * shape_flops_per_token(depth, width, vocab, seq_len)
