"""Benchmark `lmkit pretrain` against nanoGPT at the same shape, and against a plain-PyTorch baseline of ours.

The shape is issue 15's: 6 layers, 6 heads, d_model 384, 256 tokens, micro-batch 16, vocabulary 8192
(13.8 M parameters on every side: lmkit's gpt-small has a SwiGLU of the same size as a 4x GELU MLP).
One run measures, each measurement in a fresh subprocess, the sides alternating round by round and each
keeping its best round (another process on shared cores can only slow a measurement down):

* lmkit: the real stage (``pretrain.run``) with the flags a user gives (``--model gpt-small --seq-len 256
  --micro-batch 16``; ``--precision auto``, which is bf16 on AVX-512 BF16 / AMX CPUs, and ``--compile``
  left on auto). The run is the default length (500 steps, so auto compiles) stopped early by
  ``--max-time``; its rate is the median step after warm-up, from metrics.jsonl. Also lmkit with
  ``--no-compile`` (eager), to show what each part is worth;
* nanoGPT (``--nanogpt path/to/model.py``, from a clone of karpathy/nanoGPT; not a dependency): its
  model.py and its ``configure_optimizers`` AdamW, trained as its train.py does (clip 1.0, then step),
  eager as its README runs it on a CPU (``--compile=False``), and compiled as its train.py does by
  default on a GPU. nanoGPT's train.py runs a CPU in float32 whatever ``dtype`` says; its bf16 rows here
  add the autocast a user would;
* the baseline: our own nanoGPT-shaped model (LayerNorm with bias, learned positions, 4x GELU MLP, tied
  head, SDPA) with fused AdamW, eager: a rerunnable reference when nanoGPT is not at hand;
* the cost of compiling: lmkit's first step from an empty compile cache and from a warm one, and the
  break-even steps against eager;
* the machine's matmul peak (MFU is lmkit's flops_per_token at the measured rate over that peak);
* quality (not with --quick): validation bits per byte of a GPT and an LSTM after the same token budget.

    python benchmarks/pretrain.py --nanogpt /tmp/nanoGPT/model.py     # about 15 minutes on 2 cores
    python benchmarks/pretrain.py --quick                             # bf16 only, one round: 5 minutes
    python benchmarks/pretrain.py --precision fp32 --nanogpt ...      # one precision, every round
    git worktree add /tmp/before REV && python benchmarks/pretrain.py --before /tmp/before --nanogpt ...
                                    # lmkit as of REV too, in the same rounds: a change's effect against the peer

Results go to stdout and benchmarks/out/pretrain.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
WORK = OUT / "pretrain"

AIM = 1.3  # issue 15: lmkit >= 1.3x nanoGPT's tokens/s, in the precision --precision auto picks
SHAPE = {"n_layer": 6, "n_head": 6, "d_model": 384, "seq_len": 256, "micro_batch": 16, "vocab_size": 8192}
PEER_STEPS, PEER_WARMUP = 20, 5       # plain loops: steps timed after warm-up steps (compiles included)
LMKIT_SECONDS, LMKIT_WARMUP = 40, 5   # the stage: its run is stopped by --max-time; steps after warm-up count
# Quality: two causal models of about a million non-embedding parameters each.
QUALITY_MODELS = {
    "gpt": {"model": "gpt-tiny", "n_layer": 4, "n_head": 4, "d_model": 128},
    "lstm": {"model": "lstm-small", "d_model": 256},
}
QUALITY_SEQ_LEN, QUALITY_MICRO_BATCH, QUALITY_TOKENS = 128, 16, 300_000


# -- child processes: each measurement runs in a fresh interpreter ---------------------------------

def child_peak(settings: dict) -> dict:
    """Best-of-N FLOP/s of square matmuls per dtype, over a few sizes."""
    import torch

    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = {}
        for n in (1024, 1536, 2048):
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            torch.matmul(a, b)  # warm-up: thread pool, oneDNN kernel selection
            seconds = []
            for _ in range(5):
                start = time.perf_counter()
                torch.matmul(a, b)
                seconds.append(time.perf_counter() - start)
            best[n] = 2 * n**3 / min(seconds)
        results[name] = max(best.values())
    return {"peak": results, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def child_lmkit(settings: dict) -> dict:
    """One `pretrain.run`; steady-state tokens/s from metrics.jsonl records after the warm-up steps."""
    import torch

    from lmkit.config import resolve
    from lmkit.progress import reporter
    from lmkit.stages import pretrain
    from lmkit.stages.pretrain_config import PretrainConfig

    reporter.configure(quiet=True)
    config = resolve(PretrainConfig, {}, settings["config"])
    start = time.perf_counter()
    artifact = pretrain.run(config)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "tokens_per_s" in r]
    tokens_per_step = train[0]["tokens"] // train[0]["step"]
    # With log_every=1 each record's rate covers exactly one step: its time is tokens / rate.
    step_seconds = [tokens_per_step / r["tokens_per_s"] for r in train]
    evals = [r for r in records if "val_bpb" in r]
    return {"wall_s": wall, "steps": len(train), "first_step_s": step_seconds[0],
            **_steady(step_seconds[settings["warmup"]:], tokens_per_step), "mfu": train[-1].get("mfu"),
            "train_s": train[-1]["elapsed_s"], "final_loss": train[-1]["loss"], "val": evals[-1] if evals else None,
            "parameters": artifact.stats["parameters"], "flops_per_token": artifact.stats["flops_per_token"],
            "threads": torch.get_num_threads()}


def _steady(step_seconds: list[float], tokens_per_step: int) -> dict:
    """Rates of the steps after warm-up. The median step is the headline: another process on these cores
    stalls a step now and then, which drags the mean but hardly moves the median."""
    median = sorted(step_seconds)[len(step_seconds) // 2]
    return {"steady_steps": len(step_seconds), "tokens_per_step": tokens_per_step, "step_s_median": median,
            "tokens_per_s": tokens_per_step / median,
            "tokens_per_s_mean": tokens_per_step * len(step_seconds) / sum(step_seconds)}


def child_peer(settings: dict) -> dict:
    """nanoGPT's model and optimizer, or our nanoGPT-shaped baseline, trained as nanoGPT's train.py does."""
    import contextlib

    import torch

    torch.manual_seed(0)
    L, H, C, T, V, B = (SHAPE[k] for k in ("n_layer", "n_head", "d_model", "seq_len", "vocab_size", "micro_batch"))
    if settings["side"].startswith("nanogpt"):
        sys.path.insert(0, settings["nanogpt"])
        from model import GPT, GPTConfig  # nanoGPT's model.py

        with contextlib.redirect_stdout(sys.stderr):  # it prints parameter counts
            model = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C, dropout=0.0,
                                  bias=False))  # train.py's default: no biases
            optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    else:
        model = _baseline_model(L, H, C, T, V)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay,
                                       "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95), fused=True)
    forward = torch.compile(model) if settings["side"].endswith("compiled") else model
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if settings["precision"] == "bf16"
                else contextlib.nullcontext())
    step_seconds = []
    for _ in range(PEER_WARMUP + PEER_STEPS):
        start = time.perf_counter()
        data = torch.randint(V, (B, T + 1))
        with autocast:
            _, loss = forward(data[:, :-1].contiguous(), data[:, 1:].contiguous())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        step_seconds.append(time.perf_counter() - start)
    return {"first_step_s": step_seconds[0], **_steady(step_seconds[PEER_WARMUP:], B * T),
            "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def _baseline_model(L: int, H: int, C: int, T: int, V: int):
    """GPT-2's architecture in plain PyTorch, as nanoGPT writes it, without biases (nanoGPT's train.py
    default); F.gelu exact, F.scaled_dot_product_attention, weights tied."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C, bias=False), nn.LayerNorm(C, bias=False)
            self.qkv, self.proj = nn.Linear(C, 3 * C, bias=False), nn.Linear(C, C, bias=False)
            self.fc, self.out = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)

        def forward(self, x):
            B = x.shape[0]
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.proj(y)
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(V, C), nn.Embedding(T, C)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln = nn.LayerNorm(C, bias=False)
            self.head = nn.Linear(C, V, bias=False)
            self.head.weight = self.tok.weight
            for p in self.parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx, targets):
            x = self.tok(idx) + self.pos(torch.arange(T))
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln(x))
            return logits, F.cross_entropy(logits.view(-1, V), targets.reshape(-1))

    return Model()


def child_dataset(settings: dict) -> dict:
    """The demo corpus, preprocessed once per vocabulary (an up-to-date artifact is reused)."""
    from lmkit.config import resolve
    from lmkit.data.demo import write_demo_corpus
    from lmkit.progress import reporter
    from lmkit.stages import preprocess
    from lmkit.stages.preprocess_config import PreprocessConfig

    reporter.configure(quiet=True)
    corpus = Path(settings["corpus"])
    write_demo_corpus(corpus)
    config = resolve(PreprocessConfig, {}, {
        "inputs": [str(corpus / "topics"), str(corpus / "stdlib"), str(corpus / "docstrings.jsonl")],
        "out": settings["out"], "vocab_size": settings["vocab_size"], "val_fraction": 0.05, "min_chars": 20,
        "seed": 0, "force": True})  # an older lmkit's dataset there is rebuilt, not an error
    artifact = preprocess.run(config)
    splits = artifact.stats["splits"]
    return {"vocab_size": artifact.stats["vocab_size"], "train_tokens": splits["train"]["tokens"],
            "validation_tokens": splits["validation"]["tokens"]}


CHILDREN = {"peak": child_peak, "lmkit": child_lmkit, "peer": child_peer, "dataset": child_dataset}


def in_child(kind: str, settings: dict, env: dict | None = None, tree: Path = ROOT) -> dict:
    """``kind`` measured in a fresh interpreter, importing lmkit from ``tree`` (this checkout, or --before's)."""
    env = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
    result = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(settings)], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise SystemExit(f"{kind} run failed ({settings})")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the benchmark ---------------------------------------------------------------------------------

def lmkit_config(dataset: Path, out: Path, precision: str, compile_: bool | None) -> dict:
    """The flags a user gives for this shape; the run is the default 500 steps, stopped by time."""
    config = {"dataset": str(dataset), "out": str(out), "model": "gpt-small", "seq_len": SHAPE["seq_len"],
              "micro_batch": SHAPE["micro_batch"], "precision": precision, "max_steps": 500,
              "max_time": f"{LMKIT_SECONDS}s", "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "force": True}
    if compile_ is not None:
        config["compile"] = compile_
    return config


def measure(dataset: Path, sides: list[str], precisions: list[str], rounds: int, nanogpt: str,
            before: Path | None = None) -> dict:
    runs: dict = {(side, p): [] for p in precisions for side in sides}
    for round_ in range(rounds):
        order = list(runs) if round_ % 2 == 0 else list(runs)[::-1]
        for side, precision in order:
            if side.startswith("lmkit"):
                out = WORK / f"run-{side}-{precision}"
                compile_ = False if side == "lmkit-eager" else None  # None: --compile left on auto
                run = in_child("lmkit", {"config": lmkit_config(dataset, out, precision, compile_),
                                         "warmup": LMKIT_WARMUP}, tree=before if side == "lmkit-before" else ROOT)
                shutil.rmtree(out, ignore_errors=True)
            else:
                run = in_child("peer", {"side": side, "precision": precision, "nanogpt": nanogpt})
            runs[(side, precision)].append(run)
            print(f"round {round_ + 1}: {side:18s} {precision}: {run['tokens_per_s']:8,.0f} tok/s "
                  f"(median step {run['step_s_median'] * 1e3:.0f} ms; first step {run['first_step_s']:.1f} s)",
                  flush=True)
    return runs


def compile_cost(dataset: Path) -> dict:
    """lmkit's first step from an empty torch.compile cache, then from the cache that run filled."""
    cache = Path(tempfile.mkdtemp(prefix="lmkit-inductor-"))
    try:
        env = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
        result = {}
        for name in ("cold", "warm"):
            out = WORK / f"compile-{name}"
            run = in_child("lmkit", {"config": lmkit_config(dataset, out, "auto", None), "warmup": LMKIT_WARMUP},
                           env)
            shutil.rmtree(out, ignore_errors=True)
            result[name] = {"first_step_s": round(run["first_step_s"], 2), "step_s": round(run["step_s_median"], 4)}
        return result
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def quality(dataset: Path, data: dict) -> dict:
    tokens_per_step = QUALITY_SEQ_LEN * QUALITY_MICRO_BATCH
    steps = math.ceil(QUALITY_TOKENS / tokens_per_step)
    results = {"token_budget": steps * tokens_per_step, "steps": steps, "seq_len": QUALITY_SEQ_LEN,
               "micro_batch": QUALITY_MICRO_BATCH, "epochs": round(steps * tokens_per_step / data["train_tokens"], 2)}
    for name, spec in QUALITY_MODELS.items():
        out = WORK / f"quality-{name}"
        config = {"dataset": str(dataset), "out": str(out), "seq_len": QUALITY_SEQ_LEN,
                  "micro_batch": QUALITY_MICRO_BATCH, "max_steps": steps, "warmup_steps": max(steps // 10, 1),
                  "eval_every": steps, "eval_batches": 0, "checkpoint_every": 0, "log_every": 1, "force": True,
                  **spec}
        run = in_child("lmkit", {"config": config, "warmup": min(5, steps - 1)})
        shutil.rmtree(out, ignore_errors=True)
        results[name] = {"settings": spec, "parameters": run["parameters"], "val_bpb": round(run["val"]["val_bpb"], 4),
                         "tokens_per_s": round(run["tokens_per_s"]), "train_s": round(run["train_s"], 1)}
        print(f"quality {name} ({run['parameters']:,} parameters): val_bpb {run['val']['val_bpb']:.4f} after "
              f"{results['token_budget']:,} tokens, {run['tokens_per_s']:,.0f} tok/s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", help="nanoGPT's model.py (from a clone of karpathy/nanoGPT)")
    parser.add_argument("--quick", action="store_true", help="bf16 only, one round, no compile cost or quality")
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="this precision only, over --rounds, without "
                        "the compile cost and quality (written to pretrain-PRECISION.json)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="a checkout of an earlier lmkit (git worktree add DIR REV): measured as "
                        "lmkit-before in the same rounds, so a change's effect shows against the same peer run")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return

    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    dataset = WORK / "data"
    data = in_child("dataset", {"corpus": str(WORK / "corpus"), "out": str(dataset),
                                "vocab_size": SHAPE["vocab_size"]})
    print(f"dataset: demo corpus, vocabulary {data['vocab_size']}, {data['train_tokens']:,} training tokens")
    import torch

    from lmkit.devices import resolve_precision

    auto = resolve_precision("auto", torch.device("cpu"))
    nanogpt = str(Path(args.nanogpt).resolve().parent) if args.nanogpt else ""
    before = Path(args.before).resolve() if args.before else None
    sides = (["lmkit", "lmkit-eager"] + (["lmkit-before"] if before else []) + ["baseline"]
             + (["nanogpt", "nanogpt-compiled"] if nanogpt else []))
    precisions = ["bf16"] if args.quick else [args.precision] if args.precision else ["bf16", "fp32"]
    machine = in_child("peak", {})
    runs = measure(dataset, sides, precisions, 1 if args.quick else args.rounds, nanogpt, before)
    peak = machine["peak"]
    results: dict = {"shape": SHAPE, "auto_precision": auto, "torch": machine["torch"], "threads": machine["threads"],
                     "cpu_capability": machine["cpu_capability"], "cores": os.cpu_count(),
                     "peak_flops": {k: round(v) for k, v in peak.items()}, "throughput": {}}
    print(f"\ntorch {machine['torch']}, {machine['threads']} threads, {machine['cpu_capability']}; matmul peak "
          f"bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s; --precision auto: {auto}")
    reference = "nanogpt" if nanogpt else "baseline"
    for precision in precisions:
        best = {side: max(runs[(side, precision)], key=lambda r: r["tokens_per_s"]) for side in sides}
        row = {side: {"tokens_per_s": round(run["tokens_per_s"]), "step_s_median": round(run["step_s_median"], 4),
                      "rounds": [round(r["tokens_per_s"]) for r in runs[(side, precision)]]}
               for side, run in best.items()}
        flops = best["lmkit"]["flops_per_token"]
        for side in sides:
            row[side]["mfu"] = round(flops * best[side]["tokens_per_s"] / peak[precision], 4)
            row[side]["lmkit_over"] = round(best["lmkit"]["tokens_per_s"] / best[side]["tokens_per_s"], 3)
        results["throughput"][precision] = row
        print(f"\n{precision} (MFU: {flops / 1e6:.1f} MFLOPs/token over the measured peak)")
        print("| side | tokens/s | MFU | lmkit / side |\n| --- | ---: | ---: | ---: |")
        for side in sides:
            print(f"| {side} | {row[side]['tokens_per_s']:,} | {row[side]['mfu']:.1%} | "
                  f"{row[side]['lmkit_over']:.2f} |")
    if auto in precisions:
        ratio = results["throughput"][auto][reference]["lmkit_over"]
        results["aim"] = {"reference": reference, "precision": auto, "ratio": ratio, "aim": AIM, "met": ratio >= AIM}
        print(f"\naim: lmkit >= {AIM}x {reference} in {auto} (--precision auto): {ratio:.2f}x -> "
              f"{'MET' if ratio >= AIM else 'NOT MET'}")
        if before:
            row = results["throughput"][auto]
            was = row["lmkit-before"]["tokens_per_s"] / row[reference]["tokens_per_s"]
            results["aim"]["before"] = {"tree": str(before), "ratio": round(was, 3)}
            print(f"before ({before}): {was:.2f}x {reference}; after: {ratio:.2f}x")
    if not (args.quick or args.precision):
        cost = compile_cost(dataset)
        eager = results["throughput"][precisions[0]]["lmkit-eager"]["step_s_median"]
        saved = eager - cost["warm"]["step_s"]
        for name in ("cold", "warm"):
            overhead = cost[name]["first_step_s"] - eager
            cost[name]["break_even_steps"] = math.ceil(overhead / saved) if saved > 0 else None
            print(f"compile ({name} cache): first step {cost[name]['first_step_s']:.1f} s; pays off after "
                  f"{cost[name]['break_even_steps']} steps (saves {saved * 1e3:.0f} ms a step)")
        results["compile"] = cost
        results["quality"] = quality(dataset, data)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(f"total {results['seconds']:.0f} s")
    (OUT / (f"pretrain-{args.precision}.json" if args.precision else "pretrain.json")).write_text(
        json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
