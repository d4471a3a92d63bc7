"""Benchmark `lmkit generate`: the KV cache against recomputing the sequence, and int8 against fp32.

One run measures, side by side in one process (each setting alternately, best of the rounds kept,
since another process on the same cores can only slow a measurement down):

* speed: greedy decoding tokens/s of a gpt-small-shaped model (random weights: speed does not depend
  on them) at batch 1 and batch 8 (prompts of different lengths, left-padded), through lmkit's real
  decoding loop (``lmkit.generation.decode``) with the KV cache and with the reference path that reruns
  the whole sequence at every step; fp32 and ``--quantize int8``. Every row generates exactly
  ``NEW_TOKENS`` tokens (no end-of-sequence stop), so all settings do the same work;
* quality: validation bits per byte of a small GPT trained on the built-in demo corpus (trained here
  once, then reused: the stages are make-friendly), in fp32 and with int8 Linear layers.

    python benchmarks/generate.py              # about a minute on 2 idle cores (the first time: +1 minute training)
    python benchmarks/generate.py --threads 1  # steadier on cores shared with other processes

Results go to stdout (with a markdown table) and benchmarks/out/generate.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from lmkit import artifacts
from lmkit.config import resolve
from lmkit.data.demo import write_demo_corpus
from lmkit.data.packing import CausalWindows, load_stream
from lmkit.generation.decode import decode
from lmkit.generation.model import load_model
from lmkit.generation.quantize import quantize_int8
from lmkit.generation.sampling import row_generators
from lmkit.generation.settings import SamplingSettings
from lmkit.models import build_model, count_parameters, model_config
from lmkit.progress import reporter
from lmkit.stages import preprocess, pretrain
from lmkit.stages.preprocess_config import PreprocessConfig
from lmkit.stages.pretrain_config import PretrainConfig
from lmkit.training.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
WORK = OUT / "generate"

SPEED_MODEL = "gpt-small"      # 6 layers, 6 heads, d_model 384, block size 256
SPEED_VOCAB = 4000
PROMPT_LENGTHS = {1: [32], 8: [18, 20, 22, 24, 26, 28, 30, 32]}  # batch size -> prompt lengths
NEW_TOKENS = 32
ROUNDS = 2
QUALITY_TRAINING = {"model": "gpt-tiny", "d_model": 128, "n_head": 4, "n_layer": 2, "seq_len": 128,
                    "micro_batch": 8, "max_steps": 200, "warmup_steps": 20, "lr": 3e-3, "eval_every": 0,
                    "checkpoint_every": 0, "precision": "fp32", "seed": 0}


# -- speed -----------------------------------------------------------------------------------------

def speed_model(quantized: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(model_config(SPEED_MODEL, SPEED_VOCAB)).eval().requires_grad_(False)
    if quantized:
        quantize_int8(model)
    return model


def timed_decode(model: torch.nn.Module, batch: int, use_cache: bool) -> tuple[float, float]:
    """Wall and CPU seconds to generate NEW_TOKENS tokens for each of ``batch`` prompts (greedy, no early
    stop). CPU time is the figure that other processes on the same cores disturb least."""
    generator = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(7, SPEED_VOCAB, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS[batch]]
    settings = SamplingSettings(max_new_tokens=NEW_TOKENS, temperature=0)
    generators = row_generators(0, [(0, i) for i in range(batch)])
    start, cpu_start = time.perf_counter(), time.process_time()
    results = decode(model, prompts, settings, generators, use_cache=use_cache, eos_id=None)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    assert all(len(r.ids) == NEW_TOKENS for r in results)
    return seconds, cpu_seconds


def measure_speed() -> dict:
    models = {"fp32": speed_model(False), "int8": speed_model(True)}
    settings = [(precision, batch, cache) for batch in (1, 8) for precision in ("fp32", "int8")
                for cache in (True, False) if cache or precision == "fp32"]
    for precision, batch, cache in settings[:2]:  # warm-up: thread pool, kernel selection
        timed_decode(models[precision], batch, cache)
    best: dict = {}
    for _ in range(ROUNDS):
        for precision, batch, cache in settings:
            seconds, cpu_seconds = timed_decode(models[precision], batch, cache)
            key = (precision, batch, cache)
            if key not in best or seconds < best[key][0]:
                best[key] = (seconds, cpu_seconds)
    results: dict = {"model": SPEED_MODEL, "vocab_size": SPEED_VOCAB,
                     "parameters": count_parameters(models["fp32"]), "new_tokens": NEW_TOKENS,
                     "prompt_lengths": {str(b): lengths for b, lengths in PROMPT_LENGTHS.items()}, "rounds": ROUNDS}
    for (precision, batch, cache), (seconds, cpu_seconds) in best.items():
        results.setdefault(f"batch{batch}", {})[f"{precision}_{'cache' if cache else 'recompute'}"] = {
            "seconds": round(seconds, 4), "tokens_per_s": round(batch * NEW_TOKENS / seconds, 1),
            "cpu_share": round(cpu_seconds / seconds / torch.get_num_threads(), 3)}
    for batch in (1, 8):
        row = results[f"batch{batch}"]
        rate = {name: setting["tokens_per_s"] for name, setting in row.items()}
        row["cache_over_recompute"] = round(rate["fp32_cache"] / rate["fp32_recompute"], 2)
        row["int8_over_fp32"] = round(rate["int8_cache"] / rate["fp32_cache"], 2)
    return results


# -- quality ---------------------------------------------------------------------------------------

def trained_checkpoint() -> Path:
    corpus, data, run = WORK / "corpus", WORK / "data", WORK / "gpt"
    write_demo_corpus(corpus)
    preprocess.run(resolve(PreprocessConfig, {}, {
        "inputs": [str(corpus / "topics"), str(corpus / "docstrings.jsonl")], "out": str(data),
        "vocab_size": 4000, "val_fraction": 0.05, "min_chars": 20, "seed": 0}))
    # Up to date (no work) when the run already holds this training; --force replaces another one.
    pretrain.run(resolve(PretrainConfig, {}, {"dataset": str(data), "out": str(run), "force": True,
                                              **QUALITY_TRAINING}))
    return run / "final"


@torch.no_grad()
def bits_per_byte(model: torch.nn.Module, dataset: artifacts.Artifact, seq_len: int) -> float:
    """Mean next-token loss over every validation window, in bits per UTF-8 byte (as pretrain reports it)."""
    stream = load_stream(dataset, "validation")
    windows = CausalWindows(stream, seq_len)
    total, count = 0.0, 0
    for start in range(0, windows.count, 16):
        inputs, targets = windows.batch(torch.arange(start, min(start + 16, windows.count)).numpy())
        _, loss = model(inputs, targets)
        total += loss.item() * targets.numel()
        count += targets.numel()
    return total / count / math.log(2) / stream.bytes_per_token


def measure_quality() -> dict:
    path = trained_checkpoint()
    checkpoint = read_checkpoint(path)
    dataset = artifacts.load(WORK / "data", kind="dataset")
    seq_len = QUALITY_TRAINING["seq_len"]
    fp32 = bits_per_byte(load_model(checkpoint), dataset, seq_len)
    int8 = bits_per_byte(load_model(checkpoint, quantize="int8"), dataset, seq_len)
    return {"checkpoint": str(path.relative_to(ROOT)), "training": QUALITY_TRAINING,
            "validation_tokens": dataset.stats["splits"]["validation"]["tokens"],
            "val_bpb_fp32": round(fp32, 6), "val_bpb_int8": round(int8, 6),
            "int8_bpb_increase": round(int8 - fp32, 6), "int8_bpb_increase_relative": round(int8 / fp32 - 1, 7)}


def markdown(speed: dict) -> str:
    lines = ["| batch | fp32 recompute tok/s | fp32 KV cache tok/s | cache / recompute | int8 KV cache tok/s | "
             "int8 / fp32 |", "|---|---|---|---|---|---|"]
    for batch in (1, 8):
        row = speed[f"batch{batch}"]
        rate = {name: setting["tokens_per_s"] for name, setting in row.items() if isinstance(setting, dict)}
        lines.append(f"| {batch} | {rate['fp32_recompute']:,.0f} | {rate['fp32_cache']:,.0f} | "
                     f"{row['cache_over_recompute']:.1f}x | {rate['int8_cache']:,.0f} | {row['int8_over_fp32']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default); "
                        "1 gives steadier figures on cores shared with other processes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    reporter.configure(quiet=True)
    WORK.mkdir(parents=True, exist_ok=True)
    quality = measure_quality()
    print(f"quality: {quality['checkpoint']} (gpt d_model 128, 2 layers, {QUALITY_TRAINING['max_steps']} steps), "
          f"validation bits per byte fp32 {quality['val_bpb_fp32']:.6f}, int8 {quality['val_bpb_int8']:.6f} "
          f"({quality['int8_bpb_increase']:+.6f}, {quality['int8_bpb_increase_relative']:+.4%}) over "
          f"{quality['validation_tokens']:,} tokens")
    speed = measure_speed()
    print(f"speed: {SPEED_MODEL} shape, {speed['parameters']:,} parameters, random weights, vocab {SPEED_VOCAB}; "
          f"greedy, {NEW_TOKENS} new tokens per prompt; prompts of {PROMPT_LENGTHS[1][0]} tokens (batch 1) and "
          f"{min(PROMPT_LENGTHS[8])}-{max(PROMPT_LENGTHS[8])} tokens (batch 8, left-padded); best of {ROUNDS}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    shares = [setting["cpu_share"] for row in ("batch1", "batch8") for setting in speed[row].values()
              if isinstance(setting, dict)]
    if min(shares) < 0.9:
        print(f"  note: some measurements got only {min(shares):.0%} of the threads' CPU time: other processes "
              "were using these cores (ratios of settings measured side by side are the steadier figures)")
    table = markdown(speed)
    print(table)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
               "load_average": os.getloadavg(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "speed": speed, "quality": quality,
               "markdown": table, "seconds": round(time.perf_counter() - started, 1)}
    print(f"total {results['seconds']:.0f} s")
    (OUT / "generate.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
