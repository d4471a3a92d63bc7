"""One GPT-2 training step: lmkit's classic GPT-2 against nanoGPT's and transformers' at the same shape.

The three implementations of the same architecture (pre-norm LayerNorm with biases, learned positions,
GELU MLP 4x, tied head, SDPA attention) train on the same random tokens with the same optimizer
(torch.optim.AdamW) under bf16 autocast; each measurement runs in a fresh subprocess, the sides
alternate round by round, and each side keeps its best round (other processes on shared cores slow
whichever run they overlap). Ratios are lmkit's tokens/s over each peer's.

    python benchmarks/gpt2_step.py --nanogpt path/to/nanoGPT/model.py     # about 3 minutes on 2 cores

nanoGPT is not a dependency: pass its model.py (e.g. from a clone of karpathy/nanoGPT); without
--nanogpt only transformers is compared. Results go to stdout and benchmarks/out/gpt2_step.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(n_layer=6, n_head=6, d_model=384, block_size=256, vocab_size=8192)
BATCH, STEPS, WARMUP = 8, 6, 2

WORKER = r'''
import sys, time, torch
side, shape, batch, steps, warmup, nanogpt = sys.argv[1], eval(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
L, H, C, T, V = (shape[k] for k in ("n_layer", "n_head", "d_model", "block_size", "vocab_size"))
if side == "lmkit":
    from lmkit.models import build_model, model_config
    model = build_model(model_config("gpt2-tiny", V, n_layer=L, n_head=H, d_model=C, block_size=T, mlp="gelu"))
    loss_of = lambda x, y: model(x, y)[1]
elif side == "nanogpt":
    sys.path.insert(0, nanogpt)
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C, dropout=0.0, bias=True))
    loss_of = lambda x, y: model(x, y)[1]
else:
    import transformers
    config = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=H,
                                     activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     attn_implementation="sdpa")
    model = transformers.GPT2LMHeadModel(config)
    loss_of = lambda x, y: torch.nn.functional.cross_entropy(model(input_ids=x).logits.flatten(0, 1).float(),
                                                             y.flatten())
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
x, y = torch.randint(0, V, (batch, T)), torch.randint(0, V, (batch, T))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_of(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
for _ in range(warmup):
    step()
started = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - started) / steps)
'''


def measure(side: str, nanogpt: str) -> float:
    result = subprocess.run([sys.executable, "-c", WORKER, side, repr(SHAPE), str(BATCH), str(STEPS), str(WARMUP),
                             nanogpt], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{side}: the measurement failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", help="nanoGPT's model.py (its directory is put on sys.path)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sides = ["lmkit", "transformers"] + (["nanogpt"] if args.nanogpt else [])
    nanogpt = str(Path(args.nanogpt).resolve().parent) if args.nanogpt else ""
    best = {side: float("inf") for side in sides}
    for round_ in range(args.rounds):
        order = sides if round_ % 2 == 0 else sides[::-1]
        for side in order:
            seconds = measure(side, nanogpt)
            best[side] = min(best[side], seconds)
            print(f"round {round_ + 1}: {side:12s} {seconds * 1000:8.1f} ms/step", flush=True)
    tokens = BATCH * SHAPE["block_size"]
    summary = {"shape": SHAPE, "batch": BATCH, "precision": "bf16 autocast",
               "tokens_per_s": {side: tokens / seconds for side, seconds in best.items()},
               "lmkit_over": {side: best[side] / best["lmkit"] for side in sides if side != "lmkit"}}
    for side, ratio in summary["lmkit_over"].items():
        print(f"lmkit / {side}: {ratio:.3f}x tokens/s (best of {args.rounds} rounds each)")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpt2_step.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
