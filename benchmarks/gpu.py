"""lmkit on one GPU in one run of at most 8 minutes (issue 35, part 3): what the CPU benchmarks cannot show.

Run it through ``benchmarks/gpu.sh`` (which finds a Python with torch and sets up the imports). Each part runs
the real commands in processes of their own, under its own time limit inside the run's budget; a part that
fails or runs out of time is reported, and the next one runs:

1. env: GPU, driver, torch, CUDA, NCCL and Triton versions; the datasheet peak lmkit divides by for MFU
   (lmkit.devices) next to a measured 8192^3 bf16 matmul.
2. data: a synthetic corpus (random words of random syllables, made here: nothing downloaded) through
   ``lmkit preprocess`` with GPT-2's padded vocabulary, 50,304 tokens.
3. pretrain compiled / pretrain eager: ``lmkit pretrain --model gpt2-124m`` in bf16 at 1024 tokens a window,
   with --compile and --no-compile; tokens/s and MFU from RUN/metrics.jsonl (the median of the logged
   windows after the first two, which hold the compile). lmkit's MFU counts 6 N non-embedding FLOPs a
   token (Kaplan's N: no output projection); nanoGPT, nanochat and llm.c count the output projection too,
   so both are reported. The goal: 45% compiled.
4. generate: the compiled run's checkpoint decoding 256 new tokens after 32-token prompts, greedy, bf16, at
   batch 1 and 32, eager and with the decoding step compiled (torch.cuda.synchronize around each timing),
   and one ``lmkit generate`` on CUDA through the CLI.
5. fsdp: ``torchrun --nproc_per_node 1 -m lmkit pretrain --shard`` (FSDP2 in a group of one process) for 20
   steps, then the same run resumed from its step-10 checkpoint: its losses must continue the first run's.
6. loss: the forward and backward of the training loss alone at the pretraining run's shape (16 x 1024 rows,
   vocabulary 50,304, width 768, bf16 autocast): lmkit's chunked fused loss (lmkit.models.loss, written for CPU
   caches) against the plain F.linear + F.cross_entropy, eager and compiled. On a GPU the fused loss's
   float32 passes over each chunk of logits are memory-bound: this says how much of a step they take.
7. serve: ``benchmarks/serve.py --only mixed`` against ``lmkit serve`` (continuous and dynamic batching) on
   the same checkpoint, when lmkit[serve] (fastapi, uvicorn) imports; skipped otherwise.

The summary table goes to stdout and to $OUT/gpu-report.json (benchmarks/out/gpu.json when OUT is unset),
each part's log to the work directory (and the ends of them to $OUT/gpu-logs.txt).

    bash benchmarks/gpu.sh              # on a GPU machine, from the repository root
    bash benchmarks/gpu.sh --cpu        # the dry run: every part tiny and on the CPU (GPU_SH_DRY=1 too)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from serve import free_port  # benchmarks/serve.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
MFU_GOAL = 0.45


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the GPU run's, or the dry run's on a CPU."""

    model: str
    block_size: int | None   # None: the preset's (GPT-2's 1024); the dry run's tiny model needs room for serve
    seq_len: int
    micro_batch: int
    corpus_mb: float
    vocab_size: int
    compiled_steps: int
    eager_steps: int
    log_every: int
    fsdp_steps: int          # the sharded run's steps; it checkpoints half-way and is resumed from there
    fsdp_micro_batch: int
    prompt_tokens: int
    new_tokens: int
    batches: tuple[int, ...]
    serve_requests: int
    budget_s: float          # the whole run
    limits_s: dict           # each part's own limit, inside what is left of the budget


GPU = Sizes(model="gpt2-124m", block_size=None, seq_len=1024, micro_batch=16, corpus_mb=8, vocab_size=50304,
            compiled_steps=150, eager_steps=60, log_every=10, fsdp_steps=20, fsdp_micro_batch=8, prompt_tokens=32,
            new_tokens=256, batches=(1, 32), serve_requests=3, budget_s=470,
            limits_s={"env": 90, "data": 120, "pretrain-compiled": 240, "pretrain-eager": 120, "generate": 150,
                      "fsdp": 150, "loss": 60, "serve": 150})
CPU = Sizes(model="gpt2-tiny", block_size=1024, seq_len=64, micro_batch=4, corpus_mb=0.3, vocab_size=1024,
            compiled_steps=20, eager_steps=20, log_every=5, fsdp_steps=6, fsdp_micro_batch=4, prompt_tokens=16,
            new_tokens=16, batches=(1, 32), serve_requests=1, budget_s=175,
            limits_s={"env": 30, "data": 30, "pretrain-compiled": 90, "pretrain-eager": 30, "generate": 60,
                      "fsdp": 60, "loss": 60, "serve": 60})


class Part:
    """One part's result: status ok, failed, timeout or skipped, its seconds, its figures, and why not ok."""

    def __init__(self, name: str):
        self.name, self.status, self.seconds, self.figures, self.reason = name, "ok", 0.0, {}, ""

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason

    def as_dict(self) -> dict:
        return {"status": self.status, "seconds": round(self.seconds, 1), **self.figures,
                **({"reason": self.reason} if self.reason else {})}


class PartFailed(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class Runner:
    """Runs commands in process groups of their own, each under the smaller of its limit and the time left."""

    def __init__(self, work: Path, budget_s: float, dry: bool):
        self.work, self.logs = work, work / "logs"
        shutil.rmtree(self.logs, ignore_errors=True)  # this run's logs only
        self.logs.mkdir(parents=True)
        self.deadline = time.monotonic() + budget_s
        self.limit = 0.0
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                             os.environ.get("PYTHONPATH")])),
                    "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        if dry:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU's even where a GPU is present

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], timeout: float | None = None) -> str:
        """The command's output (stdout and stderr), logged to logs/NAME.log; PartFailed when it fails or runs
        past the part's time."""
        timeout = min(timeout or self.limit, self.left())
        if timeout < 5:
            raise PartFailed("timeout", f"{name}: no time left in the run's budget")
        log = self.logs / f"{name}.log"
        with log.open("w") as out:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                       start_new_session=True)  # its own group: torchrun's workers die with it
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise PartFailed("timeout", f"{name}: still running after {timeout:.0f} s ({log})") from None
        output = log.read_text(errors="replace")
        if code != 0:
            raise PartFailed("failed", f"{name}: exit code {code}: {tail(output, 6)}")
        return output


def tail(text: str, lines: int) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def lmkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmkit", *args]


def worker(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def last_json(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise PartFailed("failed", f"no JSON result in the output: {tail(output, 4)}")


# -- the parts ---------------------------------------------------------------------------------------------

def part_env(runner: Runner, device: str) -> dict:
    return last_json(runner.run("env", worker("worker-env", "--device", device)))


def synthetic_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Paragraphs of words drawn uniformly from 60,000 made of 1 to 4 random syllables: enough distinct pieces for
    a 50,304-token BPE vocabulary from a few megabytes (English text of that size has too few)."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "ch", "sh", "qu", "st", "tr"]
    words: set[str] = set()
    while len(words) < 60_000:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    lexicon = sorted(words)
    size = 0
    with path.open("w") as out:
        while size < megabytes * 1e6:
            paragraph = " ".join(rng.choice(lexicon) for _ in range(rng.randint(40, 200))) + ".\n\n"
            out.write(paragraph)
            size += len(paragraph)


def part_data(runner: Runner, sizes: Sizes) -> dict:
    corpus, data = runner.work / "corpus.txt", runner.work / "data"
    synthetic_corpus(corpus, sizes.corpus_mb)
    runner.run("data", lmkit("preprocess", str(corpus), "--out", str(data), "--vocab-size", str(sizes.vocab_size),
                             "--filters", "none", "--no-near-dedup", "--val-fraction", "0.01", "--force"))
    from lmkit import artifacts

    stats = artifacts.load(data, kind="dataset").stats
    return {"dataset": str(data), "vocab_size": stats.get("vocab_size") or sizes.vocab_size,
            "train_tokens": stats["splits"]["train"].get("tokens")}


def pretrain_flags(sizes: Sizes) -> list[str]:
    block = ["--block-size", str(sizes.block_size)] if sizes.block_size else []
    return ["--model", sizes.model, *block, "--seq-len", str(sizes.seq_len), "--precision", "bf16", "--eval-every",
            "0", "--lr", "6e-4", "--warmup-steps", "20", "--seed", "0"]


def throughput(run: Path, log_every: int) -> dict:
    """Tokens/s and MFU of a run from its metrics.jsonl and final checkpoint: the medians of the logged windows
    after the first two (the first holds the compile, the second any recompile)."""
    from lmkit import artifacts

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    if not records:
        raise PartFailed("failed", f"{run}/metrics.jsonl: no training records")
    steady = [r for r in records if r["step"] > 2 * log_every] or records[-1:]
    final = artifacts.load(run / "final", kind="checkpoint")
    model = json.loads((final.path / "model.json").read_text())["model"]
    counted = final.stats["flops_per_token"]
    head = 6.0 * model["vocab_size"] * model["d_model"]  # the output projection's forward and backward
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in steady)
    figures = {"tokens_per_s": round(tokens_per_s), "windows": len(steady), "steps": records[-1]["step"],
               "first_step_s": records[0]["elapsed_s"], "loss_first": round(records[0]["loss"], 4),
               "loss_last": round(records[-1]["loss"], 4), "parameters": final.stats.get("parameters"),
               "flops_per_token": counted}
    if "mfu" in records[-1]:
        mfu = statistics.median(r["mfu"] for r in steady)
        figures["mfu"] = round(mfu, 4)
        figures["mfu_with_head"] = round(mfu * (counted + head) / counted, 4)
    return figures


def first_line(output: str, label: str) -> str:
    """The run's first line (model, precision, compiled or eager, threads, batch), to show the flags took."""
    return next((line.strip() for line in output.splitlines() if line.strip().startswith(f"{label}:")), "")


def part_pretrain(runner: Runner, sizes: Sizes, data: str, compiled: bool) -> dict:
    name = "pretrain-compiled" if compiled else "pretrain-eager"
    run = runner.work / name
    shutil.rmtree(run, ignore_errors=True)  # an earlier run of the same recipe would be "up to date": no training
    steps = sizes.compiled_steps if compiled else sizes.eager_steps
    output = runner.run(name, lmkit("pretrain", data, "--out", str(run), *pretrain_flags(sizes),
                                    "--micro-batch", str(sizes.micro_batch), "--max-steps", str(steps),
                                    "--log-every", str(sizes.log_every), "--checkpoint-every", "0",
                                    "--compile" if compiled else "--no-compile"))
    return {"run": str(run), **throughput(run, sizes.log_every), "first_line": first_line(output, sizes.model)}


def part_generate(runner: Runner, sizes: Sizes, checkpoint: str, device: str) -> dict:
    output = runner.run("generate", worker("worker-generate", "--checkpoint", checkpoint, "--device", device,
                                           "--prompt-tokens", str(sizes.prompt_tokens),
                                           "--new-tokens", str(sizes.new_tokens),
                                           "--batches", ",".join(map(str, sizes.batches))))
    figures = last_json(output)
    cli = runner.run("generate-cli", lmkit("--quiet", "generate", checkpoint, "ba be bi", "--max-new-tokens", "16",
                                           "--temperature", "0", "--device", device, "--precision", "bf16"),
                     timeout=max(30.0, runner.limit / 3))
    figures["cli_completion"] = cli.strip().splitlines()[-1][:80]  # (the log's first line is the command)
    return figures


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def part_fsdp(runner: Runner, sizes: Sizes, data: str) -> dict:
    half = sizes.fsdp_steps // 2
    flags = [*pretrain_flags(sizes), "--micro-batch", str(sizes.fsdp_micro_batch), "--max-steps",
             str(sizes.fsdp_steps), "--log-every", "1", "--checkpoint-every", str(half), "--no-compile", "--shard"]

    def torchrun(name: str, out: Path, *extra: str) -> str:
        return runner.run(name, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                                 "--master_port", str(free_port()), "-m", "lmkit", "pretrain", data, "--out",
                                 str(out), *flags, *extra], timeout=runner.limit / 2)

    whole, resumed = runner.work / "fsdp", runner.work / "fsdp-resumed"
    for run in (whole, resumed):
        shutil.rmtree(run, ignore_errors=True)
    torchrun("fsdp", whole)
    resumed.mkdir(parents=True)
    tag = f"step-{half:08d}"
    shutil.copytree(whole / tag, resumed / tag)
    output = torchrun("fsdp-resume", resumed, "--resume")
    first, again = losses(whole), losses(resumed)
    steps = sorted(again)
    differences = [abs(again[s] - first[s]) / abs(first[s]) for s in steps if s in first]
    figures = {"steps": sizes.fsdp_steps, "resumed_from": half, "loss_first": round(first[1], 4),
               "loss_last": round(first[max(first)], 4), "resumed_steps": steps[:1] + steps[-1:],
               "resumed_max_relative_difference": max(differences) if differences else None,
               "resumed_message": next((line.strip() for line in output.splitlines() if "resuming from" in line), "")}
    # the resumed run continues: it starts at the checkpoint's next step, and each loss is the first run's
    # (kernels with atomics, such as the embedding's backward, may differ in the last bits on a GPU)
    if steps[:1] != [half + 1] or not differences or max(differences) > 1e-2:
        raise PartFailed("failed", f"the resumed run does not continue the first: {figures}")
    return figures


def part_loss(runner: Runner, sizes: Sizes, device: str, vocab_size: int) -> dict:
    width = 768 if sizes.model == "gpt2-124m" else 64
    return last_json(runner.run("loss", worker("worker-loss", "--device", device, "--rows",
                                               str(sizes.micro_batch * sizes.seq_len), "--vocab", str(vocab_size),
                                               "--width", str(width))))


def part_serve(runner: Runner, sizes: Sizes, checkpoint: str) -> dict:
    try:
        runner.run("serve-imports", [sys.executable, "-c", "import fastapi, uvicorn, prometheus_client"], timeout=60)
    except PartFailed:
        raise PartFailed("skipped", "lmkit[serve] does not import here (fastapi, uvicorn, prometheus_client): "
                                    "see docs/performance.md#a-gpu-run for the wheels to carry") from None
    out = runner.work / "serve.json"
    runner.run("serve", [sys.executable, "benchmarks/serve.py", "--checkpoint", checkpoint, "--only", "mixed",
                         "--requests", str(sizes.serve_requests), "--rounds", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["mixed"]
    return {f"{row['scheduler']}_{row['clients']}_clients_tokens_per_s": round(row["tokens_per_s"], 1)
            for row in rows} | {"continuous_32_clients_ttft_p50_ms": next(
                (round(row["ttft_p50_ms"]) for row in rows if row["scheduler"] == "continuous"
                 and row["clients"] == 32), None)}


# -- the workers: run in processes of their own, each prints one JSON line --------------------------------

def worker_env(args) -> None:
    import platform

    import torch

    from lmkit import __version__
    from lmkit.devices import can_compile, datasheet_bf16_tflops, peak_flops, processor_name

    device = torch.device(args.device)
    found = {"python": platform.python_version(), "lmkit": __version__, "torch": torch.__version__,
             "cuda": torch.version.cuda, "device": processor_name(device), "can_compile": can_compile(device)}
    try:
        import triton
        found["triton"] = triton.__version__
    except ImportError:
        found["triton"] = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found.update(capability=f"{properties.major}.{properties.minor}", memory_gib=round(properties.total_memory
                     / 2**30, 1), multiprocessors=properties.multi_processor_count,
                     cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
        nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
        found["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        try:
            found["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                             capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found["driver"] = None
        datasheet = datasheet_bf16_tflops(torch.cuda.get_device_name(device))
    else:
        datasheet = None
    peak = peak_flops(device, "bf16")  # what pretrain divides by: the datasheet's, else a probe's (cached)
    found.update(datasheet_bf16_tflops=datasheet, mfu_peak_tflops=round(peak / 1e12, 1),
                 mfu_peak_source="datasheet" if datasheet else "measured (lmkit.devices matmul probe)")
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(6):
        synchronize(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    found["matmul_bf16_tflops"] = round(2 * n**3 / best / 1e12, 1)
    print(json.dumps(found))


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_generate(args) -> None:
    """Greedy decoding of random prompts with no end-of-text stop, so every row decodes --new-tokens; eager, then
    with the decoding step compiled (Generator's compile); each timing the best of two after a first call (which
    compiles, and is reported)."""
    import torch

    from lmkit.checkpoint import read_checkpoint
    from lmkit.generation.decode import decode
    from lmkit.generation.model import load_model
    from lmkit.generation.sampling import row_generators
    from lmkit.generation.settings import SamplingSettings

    device = torch.device(args.device)
    model = load_model(read_checkpoint(args.checkpoint), device, "bf16")
    batches = [int(b) for b in args.batches.split(",")]
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = {b: [torch.randint(7, vocab, (args.prompt_tokens,), generator=generator).tolist() for _ in range(b)]
               for b in batches}
    settings = SamplingSettings(max_new_tokens=args.new_tokens, temperature=0)

    def timed(batch: int, step) -> float:
        synchronize(device)
        started = time.perf_counter()
        out = decode(model, prompts[batch], settings, row_generators(0, [(0, i) for i in range(batch)]),
                     eos_id=None, banned=(), encode_step=step)
        synchronize(device)
        assert all(len(row.ids) == args.new_tokens for row in out)
        return time.perf_counter() - started

    found: dict = {"precision": "bf16", "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}
    for side, step in (("eager", None), ("compiled", torch.compile(model.encode))):
        for batch in batches:
            first = timed(batch, step)
            best = min(timed(batch, step) for _ in range(2))
            found[f"{side}_batch{batch}_tokens_per_s"] = round(batch * args.new_tokens / best, 1)
            found[f"{side}_batch{batch}_first_call_s"] = round(first, 2)
    print(json.dumps(found))


def worker_loss(args) -> None:
    """Best milliseconds of the loss's forward and backward (hidden states in bf16, the output matrix an fp32
    parameter, under bf16 autocast, as in training), each after two warm-up calls."""
    import torch
    import torch.nn.functional as F

    from lmkit.models.loss import linear_cross_entropy

    device = torch.device(args.device)
    hidden = torch.randn(args.rows, args.width, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(args.vocab, args.width, device=device) * 0.02)
    targets = torch.randint(0, args.vocab, (args.rows,), device=device)

    def plain(h, w, t):
        return F.cross_entropy(F.linear(h, w).float(), t)

    sides = {"fused_eager": lambda: linear_cross_entropy(hidden, weight, None, targets),
             "plain_eager": lambda: plain(hidden, weight, targets)}
    compiled = torch.compile(plain)
    sides["plain_compiled"] = lambda: compiled(hidden, weight, targets)
    found: dict = {"rows": args.rows, "vocab": args.vocab, "width": args.width}
    for name, loss_of in sides.items():
        times = []
        for _ in range(7):
            synchronize(device)
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_of()
            loss.backward()
            synchronize(device)
            times.append(time.perf_counter() - started)
            hidden.grad = weight.grad = None
        found[f"{name}_ms"] = round(min(times[2:]) * 1e3, 2)
    # the matmuls' share: three (V x C) x rows products, forward and both gradients
    found["matmul_gflop"] = round(6 * args.rows * args.vocab * args.width / 1e9, 1)
    print(json.dumps(found))


# -- the run -------------------------------------------------------------------------------------------------

def summary_rows(parts: dict[str, Part]) -> list[tuple[str, str, str, str]]:
    shown = {"env": ("device", "driver", "torch", "cuda", "mfu_peak_tflops", "mfu_peak_source",
                     "matmul_bf16_tflops"),
             "data": ("vocab_size", "train_tokens"),
             "pretrain-compiled": ("tokens_per_s", "mfu", "mfu_with_head", "first_step_s", "loss_last"),
             "pretrain-eager": ("tokens_per_s", "mfu", "mfu_with_head", "loss_last"),
             "generate": None, "fsdp": ("loss_first", "loss_last", "resumed_from",
                                         "resumed_max_relative_difference"),
             "loss": ("fused_eager_ms", "plain_eager_ms", "plain_compiled_ms"), "serve": None}
    rows = []
    for name, part in parts.items():
        keys = shown.get(name) or [k for k in part.figures if k.endswith("tokens_per_s")]
        figures = ", ".join(f"{k} {part.figures[k]}" for k in keys if part.figures.get(k) is not None)
        rows.append((name, part.status, f"{part.seconds:.0f}", figures or part.reason))
    return rows


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    print("\n| part | status | s | figures |\n| --- | --- | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    env = sub.add_parser("worker-env")
    env.add_argument("--device", required=True)
    gen = sub.add_parser("worker-generate")
    gen.add_argument("--checkpoint", required=True)
    gen.add_argument("--device", required=True)
    gen.add_argument("--prompt-tokens", type=int, required=True)
    gen.add_argument("--new-tokens", type=int, required=True)
    gen.add_argument("--batches", required=True)
    loss = sub.add_parser("worker-loss")
    loss.add_argument("--device", required=True)
    loss.add_argument("--rows", type=int, required=True)
    loss.add_argument("--vocab", type=int, required=True)
    loss.add_argument("--width", type=int, required=True)
    parser.add_argument("--cpu", action="store_true", default=os.environ.get("GPU_SH_DRY", "") not in ("", "0"),
                        help="the dry run: every part tiny and on the CPU (also GPU_SH_DRY=1)")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "gpu-work"),
                        help="where the corpus, dataset, runs and logs go")
    parser.add_argument("--only", default="", help="comma-separated parts to run (data is run when a later part "
                                                   "needs it): env,data,pretrain-compiled,pretrain-eager,generate,"
                                                   "fsdp,loss,serve")
    args = parser.parse_args()
    if args.command == "worker-env":
        return worker_env(args)
    if args.command == "worker-generate":
        return worker_generate(args)
    if args.command == "worker-loss":
        return worker_loss(args)
    run(args)


def run(args) -> None:
    sizes = CPU if args.cpu else GPU
    device = "cpu" if args.cpu else "cuda"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(work, sizes.budget_s, args.cpu)
    wanted = set(filter(None, args.only.split(","))) or set(sizes.limits_s)
    if wanted & {"pretrain-compiled", "pretrain-eager", "fsdp", "generate", "serve"}:
        wanted.add("data")
    if wanted & {"generate", "serve"}:
        wanted.add("pretrain-compiled")  # their checkpoint
    print(f"lmkit GPU check ({'dry run on the CPU' if args.cpu else 'GPU'}): {sizes.model}, budget "
          f"{sizes.budget_s:.0f} s, work in {work}", flush=True)
    parts: dict[str, Part] = {}
    results: dict[str, dict] = {}

    def needs(name: str) -> dict:
        if name not in results:
            raise PartFailed("skipped", f"needs {name}, which did not succeed")
        return results[name]

    steps = {
        "env": lambda: part_env(runner, device),
        "data": lambda: part_data(runner, sizes),
        "pretrain-compiled": lambda: part_pretrain(runner, sizes, needs("data")["dataset"], compiled=True),
        "pretrain-eager": lambda: part_pretrain(runner, sizes, needs("data")["dataset"], compiled=False),
        "generate": lambda: part_generate(runner, sizes, needs("pretrain-compiled")["run"] + "/final", device),
        "fsdp": lambda: part_fsdp(runner, sizes, needs("data")["dataset"]),
        "loss": lambda: part_loss(runner, sizes, device, results.get("data", {}).get("vocab_size",
                                                                                   sizes.vocab_size)),
        "serve": lambda: part_serve(runner, sizes, needs("pretrain-compiled")["run"] + "/final"),
    }
    for name, step in steps.items():
        if name not in wanted:
            continue
        part = parts[name] = Part(name)
        runner.limit = sizes.limits_s[name]
        started = time.monotonic()
        print(f"== {name} (limit {min(runner.limit, runner.left()):.0f} s)", flush=True)
        try:
            part.figures = step()
            results[name] = part.figures
        except PartFailed as failure:
            part.fail(failure.status, failure.reason)
        except Exception as error:  # a bug in this script or an unexpected output: reported, the next part runs
            traceback.print_exc()
            part.fail("failed", f"{type(error).__name__}: {error}")
        part.seconds = time.monotonic() - started
        print(f"   {part.status} in {part.seconds:.0f} s: " + (part.reason or json.dumps(part.figures)), flush=True)
    report(parts, sizes, args.cpu, runner)


def report(parts: dict[str, Part], sizes: Sizes, dry: bool, runner: Runner) -> None:
    compiled = parts.get("pretrain-compiled")
    goal = {"mfu_goal": MFU_GOAL}
    if compiled is not None and "mfu" in compiled.figures:
        goal.update(mfu=compiled.figures["mfu"], mfu_with_head=compiled.figures["mfu_with_head"],
                    met_counting_lmkits_flops=compiled.figures["mfu"] >= MFU_GOAL,
                    met_counting_the_head=compiled.figures["mfu_with_head"] >= MFU_GOAL)
    eager = parts.get("pretrain-eager")
    if compiled is not None and eager is not None and compiled.figures.get("tokens_per_s") and \
            eager.figures.get("tokens_per_s"):
        goal["compiled_over_eager"] = round(compiled.figures["tokens_per_s"] / eager.figures["tokens_per_s"], 3)
    rows = summary_rows(parts)
    print_table(rows)
    print("\n" + ", ".join(f"{k} {v}" for k, v in goal.items()))
    document = {"mode": "dry run on the CPU" if dry else "gpu", "sizes": asdict(sizes), "goal": goal,
                "parts": {name: part.as_dict() for name, part in parts.items()},
                "seconds": round(sizes.budget_s - runner.left(), 1)}
    out_dir = os.environ.get("OUT")
    path = Path(out_dir) / "gpu-report.json" if out_dir else ROOT / "benchmarks" / "out" / "gpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    if out_dir:  # the ends of the logs come back with the report
        logs = sorted(runner.logs.glob("*.log"))
        Path(out_dir, "gpu-logs.txt").write_text("".join(
            f"==> {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:]) + "\n\n"
            for log in logs))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
