"""Time to a validation loss: `lmkit pretrain` with its defaults against nanoGPT's small-data recipe, on CPU.

The corpus is the King James Bible (public domain), from Debian's ``bible-kjv-text`` package, printed by
its ``bible`` program (``bible-kjv``; both installed with apt-get when missing): 31,102 verses, 4.4 MB,
one document per chapter (1,189), a verse a line. ``lmkit preprocess`` (its defaults: cleaning, dedup,
an 8,000-piece BPE tokenizer) with ``--val-fraction 0.05`` tokenizes it ONCE; both sides read those ids:
lmkit the dataset artifact, nanoGPT its train.bin/val.bin, the same split streams written as uint16
(each document followed by ``</s>``, exactly the stream lmkit packs its windows from).

* nanoGPT (``--nanogpt path/to/model.py``, from a clone of karpathy/nanoGPT; never a dependency): its
  model.py (``GPT``, ``GPTConfig``) and its ``configure_optimizers`` AdamW, trained by a loop transcribed
  from its train.py (its ``get_batch``: random offsets into a memmapped train.bin; its ``get_lr``: linear
  warmup then cosine; clip 1.0, step, zero_grad) with config/train_shakespeare_char.py's settings:
  n_layer 6, n_head 6, n_embd 384, dropout 0.2, block_size 256, batch_size 64,
  gradient_accumulation_steps 1, learning_rate 1e-3, max_iters 5000, lr_decay_iters 5000, min_lr 1e-4,
  beta2 0.99, warmup_iters 100, and train.py's defaults for the rest (bias False, weight_decay 0.1,
  beta1 0.9, grad_clip 1.0); the vocabulary is our tokenizer's. On a CPU as its README runs it: float32
  (train.py uses no autocast on a CPU), eager (``--compile=False``), ``torch.set_num_threads(--threads)``,
  ``torch.manual_seed(SEED)``. It trains for ``--minutes`` of training time (its schedule still the
  5,000-iteration one), and its validation loss at the end of that budget is the TARGET.
* lmkit: the CLI as a user runs it, ``lmkit pretrain DATA --out RUN --model gpt-small --seed SEED
  --max-time MINUTES --keep-last 1000`` (and ``--checkpoint-every N`` with ``--lmkit-checkpoint-every N``, for
  a finer curve) and nothing else: every other setting is its default (micro-batch
  8 x 256 tokens, AdamW lr 1e-3, betas (0.9, 0.95), weight decay 0.1, 50 warmup steps, then the constant
  rate ``--schedule auto`` gives a run bounded only by time, no dropout, ``--precision auto`` (bf16 where
  the CPU computes it natively), ``--compile`` auto (on for a 10+ minute run), threads from the CPUs this
  process may use, validation every 100 steps and a checkpoint every 200 steps and at each improved
  validation). ``--keep-last 1000`` only keeps every step checkpoint so that they can be evaluated after
  the run. Each run starts with an empty torch.compile cache (``TORCHINDUCTOR_CACHE_DIR``), so its first
  step pays a cold compile (``--warm-compile-cache`` to reuse one cache). gpt-small's non-embedding
  parameter count equals nanoGPT's at this shape exactly (SwiGLU of width 1,024 holds as many weights as a
  4x GELU MLP; both without biases): the run prints both counts.

The validation loss is ONE function for both sides (``shared_val_loss``): mean cross entropy in nats per
token over the first ``--val-windows`` (160: lmkit's default validation, 20 micro-batches of 8)
non-overlapping 256-token windows of the validation stream (window i: inputs ids[256 i : 256 i + 256],
targets shifted by one), in float32, eval mode (no dropout), no autocast. nanoGPT is evaluated in its own
process every ``--eval-every`` seconds of training time, its clock stopped meanwhile. lmkit's step
checkpoints (every 100-200 steps) are evaluated after its run, each in float32 from its safetensors, by
the same function in a fresh process; lmkit's own ``val_loss`` (metrics.jsonl, the same 160 windows but
under its bf16 autocast) is kept beside them as a cross-check only.

Training time excludes evaluation and checkpointing on both sides. nanoGPT: the sum of its step times.
lmkit: ``elapsed_s`` of metrics.jsonl (its clock from the start of the training loop, first-step compile
included) minus what validation and checkpoint saves cost: the logged interval right after one is counted
at the median step time of the intervals before it. Each curve is (training seconds, validation loss); the
time to reach TARGET is linearly interpolated between the two points around the first crossing. Every
training run and every evaluation is a fresh subprocess; the sides alternate which goes first, seed by
seed. Results: a markdown table on stdout and benchmarks/out/time_to_loss.json.

    python benchmarks/time_to_loss.py --nanogpt /tmp/nanoGPT/model.py                 # 3 seeds of 15 minutes
    python benchmarks/time_to_loss.py --nanogpt /tmp/nanoGPT/model.py --minutes 1 --seeds 1   # a smoke run

lmkit reaches nanoGPT's 15-minute loss in a few of its minutes, so ``--lmkit-minutes 4`` trains it for
less: its curve up to then is the same, since its rate is constant after warmup and the script passes the
``--compile`` choice its defaults make for nanoGPT's budget. ``--nanogpt-from OUT.json`` takes nanoGPT's
curves from an earlier run (the same budget and dataset) for the seeds that run holds, so that a change to
lmkit is measured again without 15 more minutes of nanoGPT a seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmkit.training.options import COMPILE_AUTO_MINUTES

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"

AIM = 0.5  # issue 35: lmkit reaches nanoGPT's loss in half its time, or less
SEQ_LEN = 256
VAL_FRACTION = 0.05
LMKIT_MODEL = "gpt-small"
LMKIT_KEEP_LAST = 1000
# nanoGPT's config/train_shakespeare_char.py, and train.py's defaults for what that file leaves out.
NANOGPT = {"n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.2, "block_size": SEQ_LEN, "bias": False,
           "batch_size": 64, "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "max_iters": 5000,
           "lr_decay_iters": 5000, "min_lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "warmup_iters": 100,
           "weight_decay": 0.1, "grad_clip": 1.0, "decay_lr": True}
# lmkit's cadences as its defaults set them (lmkit pretrain --help): where validation and saves interrupt
# the training clock.
LMKIT_EVAL_EVERY, LMKIT_CHECKPOINT_EVERY = 100, 200


# -- the corpus ------------------------------------------------------------------------------------

def kjv_corpus(path: Path) -> dict:
    """The King James Bible from Debian's bible-kjv-text, one JSON line per chapter (its verses, a line each)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from corpora import ensure_packages

    versions = ensure_packages("bible-kjv-text", "bible-kjv")
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if not match:
            raise SystemExit(f"time_to_loss.py: unexpected line from `bible`: {line[:80]!r}")
        chapters.setdefault((match[1], int(match[2])), []).append(match[4])
    verses = sum(len(v) for v in chapters.values())
    if verses != 31102 or len(chapters) != 1189:
        raise SystemExit(f"time_to_loss.py: expected 31,102 verses in 1,189 chapters, got {verses} in {len(chapters)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": "\n".join(v)}) + "\n" for v in chapters.values()))
    return {"source": "King James Bible (public domain), Debian bible-kjv-text via `bible -f Gen1:1-Rev22:21`",
            "packages": versions, "chapters": len(chapters), "verses": verses, "bytes": len(text.encode())}


def kjv_dataset(work: Path) -> tuple[dict, Path]:
    """The corpus (``kjv_corpus``) tokenized once by `lmkit preprocess` with its defaults: WORK/data."""
    corpus = kjv_corpus(work / "kjv.jsonl")
    dataset = work / "data"
    subprocess.run([sys.executable, "-m", "lmkit", "preprocess", str(work / "kjv.jsonl"), "--out", str(dataset),
                    "--val-fraction", str(VAL_FRACTION), "--force"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return corpus, dataset


# -- child processes -------------------------------------------------------------------------------

def shared_val_loss(logits_of, windows, batch: int = 16) -> float:
    """THE validation loss of both sides: mean cross entropy (nats per token) of ``logits_of(x, y)`` (B, T, V)
    over ``windows`` (K, SEQ_LEN + 1) token ids, in float32; the caller puts the model in eval mode."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            rows = torch.from_numpy(np.asarray(windows[start:start + batch], dtype=np.int64))
            x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
            logits = logits_of(x, y).float()
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    return total / count


def val_windows(val_bin: str, count: int):
    import numpy as np

    data = np.fromfile(val_bin, dtype=np.uint16)
    available = (len(data) - 1) // SEQ_LEN
    if available < count:
        raise SystemExit(f"time_to_loss.py: the validation split has {available} windows of {SEQ_LEN}; "
                         f"--val-windows {count} asks for more")
    return np.stack([data[i * SEQ_LEN:i * SEQ_LEN + SEQ_LEN + 1] for i in range(count)])


def child_export(settings: dict) -> dict:
    """The dataset's train and validation streams (documents each followed by </s>, as lmkit packs them) as
    nanoGPT's uint16 train.bin / val.bin."""
    import numpy as np

    from lmkit import artifacts
    from lmkit.data.packing import read_stream

    dataset = artifacts.load(settings["dataset"], kind="dataset")
    tokenizer = artifacts.load(Path(settings["dataset"]) / "tokenizer", kind="tokenizer")
    vocab = int(tokenizer.stats["vocab_size"])
    if vocab > 65536:
        raise SystemExit("time_to_loss.py: nanoGPT's bins are uint16; the vocabulary is larger")
    counts = {}
    for split, name in (("train", "train.bin"), ("validation", "val.bin")):
        stream = read_stream(dataset, split)
        stream.tokens.astype(np.uint16).tofile(Path(settings["out"]) / name)
        counts[split] = {"tokens": len(stream), "documents": stream.documents, "bytes": stream.text_bytes}
    return {"vocab_size": vocab, "splits": counts, "dataset_id": dataset.id}


def child_nanogpt(settings: dict) -> dict:
    """nanoGPT's model and optimizer, trained as its train.py trains them, for ``budget_s`` seconds of training
    time; evaluated by shared_val_loss every ``eval_every`` seconds of it (the clock stopped meanwhile)."""
    import contextlib

    import numpy as np
    import torch

    c = NANOGPT
    torch.set_num_threads(settings["threads"])
    torch.manual_seed(settings["seed"])
    sys.path.insert(0, settings["nanogpt"])
    from model import GPT, GPTConfig  # nanoGPT's model.py

    with contextlib.redirect_stdout(sys.stderr):  # it prints parameter counts
        model = GPT(GPTConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
                              block_size=c["block_size"], bias=c["bias"], vocab_size=settings["vocab_size"],
                              dropout=c["dropout"]))
        optimizer = model.configure_optimizers(c["weight_decay"], c["learning_rate"], (c["beta1"], c["beta2"]), "cpu")
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    windows = val_windows(settings["val_bin"], settings["val_windows"])
    block_size, batch_size = c["block_size"], c["batch_size"]

    def get_batch():  # train.py's, for split 'train' on a CPU
        data = np.memmap(settings["train_bin"], dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64)) for i in ix])
        return x, y

    def get_lr(it):  # train.py's
        if it < c["warmup_iters"]:
            return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
        if it > c["lr_decay_iters"]:
            return c["min_lr"]
        decay_ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
        return c["min_lr"] + coeff * (c["learning_rate"] - c["min_lr"])

    def evaluate() -> float:
        model.eval()
        loss = shared_val_loss(lambda x, y: model(x, y)[0], windows)
        model.train()
        return loss

    curve, losses, step_seconds = [], [], []
    train_s, eval_s, iter_num, next_eval = 0.0, 0.0, 0, settings["eval_every"]
    wall = time.perf_counter()
    X, Y = get_batch()  # train.py fetches the first batch before its loop
    while True:
        start = time.perf_counter()
        lr = get_lr(iter_num) if c["decay_lr"] else c["learning_rate"]
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(c["gradient_accumulation_steps"]):
            _, loss = model(X, Y)
            loss = loss / c["gradient_accumulation_steps"]
            X, Y = get_batch()
            loss.backward()
        if c["grad_clip"] != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item() * c["gradient_accumulation_steps"])
        step_seconds.append(time.perf_counter() - start)
        train_s += step_seconds[-1]
        iter_num += 1
        done = train_s >= settings["budget_s"] or iter_num > c["max_iters"]
        if done or train_s >= next_eval:
            started = time.perf_counter()
            curve.append({"step": iter_num, "tokens": iter_num * batch_size * block_size, "train_s": round(train_s, 2),
                          "val_loss": evaluate(), "lr": lr})
            eval_s += time.perf_counter() - started
            print(f"nanoGPT step {iter_num} ({train_s:.0f} s): train loss {losses[-1]:.4f}, "
                  f"val {curve[-1]['val_loss']:.4f}", file=sys.stderr, flush=True)
            while next_eval <= train_s:
                next_eval += settings["eval_every"]
        if done:
            break
    return {"curve": curve, "steps": iter_num, "tokens": iter_num * batch_size * block_size, "train_s": train_s,
            "eval_s": eval_s, "wall_s": time.perf_counter() - wall,
            "step_s_median": sorted(step_seconds)[len(step_seconds) // 2], "first_step_s": step_seconds[0],
            "final_train_loss": losses[-1], "threads": torch.get_num_threads(),
            "parameters": {"total": total, "non_embedding": total - embeddings}}


def child_evaluate(settings: dict) -> dict:
    """shared_val_loss of each lmkit checkpoint, loaded as `lmkit evaluate` loads one (float32, eval mode)."""
    import torch

    from lmkit.checkpoint import read_checkpoint
    from lmkit.models import count_parameters

    torch.set_num_threads(settings["threads"])
    windows = val_windows(settings["val_bin"], settings["val_windows"])
    points, parameters = [], None
    for path in settings["checkpoints"]:
        checkpoint = read_checkpoint(path)
        model = checkpoint.inference_model().float()
        if parameters is None:
            parameters = {"total": count_parameters(model),
                          "non_embedding": count_parameters(model, non_embedding=True)}
        state = checkpoint.trainer_state()
        loss = shared_val_loss(lambda x, y, model=model: model(x)[0], windows)
        points.append({"checkpoint": Path(path).name, "step": state.step, "tokens": state.tokens,
                       "elapsed_s": state.elapsed_seconds, "val_loss": loss})
    return {"points": points, "parameters": parameters, "threads": torch.get_num_threads()}


CHILDREN = {"export": child_export, "nanogpt": child_nanogpt, "evaluate": child_evaluate}


def in_child(kind: str, settings: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(settings)],
                            stdout=subprocess.PIPE, stderr=None, text=True, env=env)  # progress: our stderr
    if result.returncode != 0:
        raise SystemExit(f"time_to_loss.py: {kind} run failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- lmkit's side ----------------------------------------------------------------------------------

def run_lmkit(dataset: Path, run_dir: Path, seed: int, budget_s: float, warm_cache: bool,
              checkpoint_every: int | None, compile_flag: str | None = None) -> dict:
    """`lmkit pretrain` as a user runs it, in a fresh process; its output goes to RUN.log. ``compile_flag``: the
    choice its --compile auto makes for nanoGPT's budget, given when lmkit's own budget is shorter."""
    command = [sys.executable, "-m", "lmkit", "pretrain", str(dataset), "--out", str(run_dir), "--model", LMKIT_MODEL,
               "--seed", str(seed), "--max-time", f"{budget_s:g}s", "--keep-last", str(LMKIT_KEEP_LAST), "--force"]
    if compile_flag:
        command.append(compile_flag)
    if checkpoint_every:
        command += ["--checkpoint-every", str(checkpoint_every)]
    cache = None if warm_cache else tempfile.mkdtemp(prefix="lmkit-ttl-inductor-")
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"TORCHINDUCTOR_CACHE_DIR": cache} if cache else {})}
    log = run_dir.with_name(run_dir.name + ".log")
    started = time.perf_counter()
    try:
        with log.open("w") as f:
            proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-3000:])
        raise SystemExit(f"time_to_loss.py: lmkit pretrain failed (exit {proc.returncode}); see {log}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first_line = next((line for line in log.read_text().splitlines() if "compiled" in line or "eager" in line), "")
    return {"command": " ".join(["lmkit", *command[3:]]), "wall_s": wall, "records": records,
            "first_line": first_line.strip()}


def lmkit_clock(records: list[dict], checkpoint_every: int = LMKIT_CHECKPOINT_EVERY,
                eval_every: int = LMKIT_EVAL_EVERY) -> dict:
    """Training seconds at each logged step: elapsed_s less validation and checkpoint time. The logged interval
    that follows a step where lmkit validated or saved (a multiple of its --eval-every / --checkpoint-every) is
    counted at the median step time of the last 20 clean intervals instead."""
    train = sorted((r["step"], r["elapsed_s"]) for r in records if "tokens_per_s" in r)
    clock, clean, overhead = {0: 0.0}, [], 0.0
    previous_step, previous_elapsed, total = 0, 0.0, 0.0
    for step, elapsed in train:
        seconds = elapsed - previous_elapsed
        interrupted = any(b > 0 and (b % eval_every == 0 or b % checkpoint_every == 0)
                          for b in range(previous_step, step))
        if interrupted and clean:
            per_step = statistics.median(clean[-20:])
            overhead += seconds - per_step * (step - previous_step)
            seconds = per_step * (step - previous_step)
        elif previous_step > 0:  # the first interval holds the first step's compile: not a step time
            clean.append(seconds / (step - previous_step))
        total += seconds
        clock[step] = total
        previous_step, previous_elapsed = step, elapsed
    return {"clock": clock, "overhead_s": overhead, "step_s_median": statistics.median(clean) if clean else None,
            "last_step": previous_step, "last_elapsed": previous_elapsed}


def train_seconds(point: dict, clock: dict) -> float:
    """A checkpoint's training seconds: from the clock at its step, else its own elapsed time less the overhead
    counted up to the last logged step (the final checkpoint's step need not be a logged one)."""
    if point["step"] in clock["clock"]:
        return clock["clock"][point["step"]]
    return point["elapsed_s"] - clock["overhead_s"]


def lmkit_checkpoints(run_dir: Path) -> list[Path]:
    steps = sorted((p for p in run_dir.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    return steps + ([run_dir / "final"] if (run_dir / "final").is_dir() else [])


def evaluate_lmkit(clock: dict, paths: list[Path], settings: dict) -> dict:
    result = in_child("evaluate", {**settings, "checkpoints": [str(p) for p in paths]})
    for point in result["points"]:
        point["train_s"] = round(train_seconds(point, clock), 2)
    return result


def crossing(curve: list[dict], target: float) -> dict:
    """The training seconds at which ``curve`` first reaches ``target``, linearly interpolated between the points
    around the crossing (``None`` if it never does; ``at_most`` when the first point is already below it)."""
    points = sorted(curve, key=lambda p: p["train_s"])
    for i, point in enumerate(points):
        if point["val_loss"] <= target:
            if i == 0:
                return {"seconds": point["train_s"], "at_most": True}
            a = points[i - 1]
            share = (a["val_loss"] - target) / (a["val_loss"] - point["val_loss"])
            return {"seconds": a["train_s"] + share * (point["train_s"] - a["train_s"]), "at_most": False,
                    "between": [a["train_s"], point["train_s"]]}
    return {"seconds": None, "at_most": False}


# -- the benchmark ---------------------------------------------------------------------------------

def one_seed(seed: int, args, dataset: Path, data: dict, work: Path, earlier: dict | None = None) -> dict:
    """One seed of both sides; ``earlier``: this seed's result in an earlier run (--nanogpt-from), whose nanoGPT
    side is taken as it is."""
    budget_s = args.minutes * 60
    shared = {"val_bin": str(work / "val.bin"), "val_windows": args.val_windows, "threads": args.threads}
    order = ["nanogpt", "lmkit"] if seed % 2 == 0 else ["lmkit", "nanogpt"]
    result: dict = {"seed": seed, "order": order}
    lmkit_budget_s = (args.lmkit_minutes or args.minutes) * 60
    # A shorter lmkit budget must not change what lmkit's defaults do in nanoGPT's: --compile auto decides by the
    # run's length (its schedule does not: time alone bounds it, so the rate is constant after warmup).
    compile_flag = None
    if lmkit_budget_s < budget_s:
        compile_flag = "--compile" if args.minutes >= COMPILE_AUTO_MINUTES else "--no-compile"
    if earlier is not None:
        result["nanogpt"] = earlier["nanogpt"]
        result["nanogpt_from"] = str(args.nanogpt_from)
        order = ["lmkit"]
    for side in order:
        minutes = (budget_s if side == "nanogpt" else lmkit_budget_s) / 60
        print(f"seed {seed}: training {side} for {minutes:g} min ...", file=sys.stderr, flush=True)
        if side == "nanogpt":
            result["nanogpt"] = in_child("nanogpt", {**shared, "seed": seed, "budget_s": budget_s,
                                                     "eval_every": args.eval_every, "nanogpt": args.nanogpt,
                                                     "vocab_size": data["vocab_size"],
                                                     "train_bin": str(work / "train.bin")})
        else:
            run_dir = work / f"lmkit-seed{seed}"
            run = run_lmkit(dataset, run_dir, seed, lmkit_budget_s, args.warm_compile_cache,
                            args.lmkit_checkpoint_every, compile_flag)
            clock = lmkit_clock(run["records"], args.lmkit_checkpoint_every or LMKIT_CHECKPOINT_EVERY)
            # Coarse first: checkpoints about --eval-every training seconds apart, and the final one.
            paths, last = [], -math.inf
            for path in lmkit_checkpoints(run_dir):
                step = None if path.name == "final" else int(path.name.split("-")[1])
                seconds = clock["clock"].get(step, math.inf) if step is not None else math.inf
                if path.name == "final" or seconds - last >= args.eval_every:
                    paths.append(path)
                    last = seconds
            evaluated = evaluate_lmkit(clock, paths, shared)
            train = [r for r in run["records"] if "tokens_per_s" in r]
            own = [{"step": r["step"], "val_loss": r["val_loss"]} for r in run["records"] if "val_loss" in r]
            result["lmkit"] = {"command": run["command"], "first_line": run["first_line"], "wall_s": run["wall_s"],
                               "steps": clock["last_step"], "tokens": train[-1]["tokens"] if train else 0,
                               "train_s": clock["clock"][clock["last_step"]], "elapsed_s": clock["last_elapsed"],
                               "overhead_s": clock["overhead_s"], "step_s_median": clock["step_s_median"],
                               "first_step_s": train[0]["elapsed_s"] if train else None,
                               "curve": evaluated["points"], "own_val_loss": own,
                               "parameters": evaluated["parameters"], "run_dir": str(run_dir), "_clock": clock}
    nano, lm = result["nanogpt"], result["lmkit"]
    target = nano["curve"][-1]["val_loss"]
    # Refine: evaluate every checkpoint between the two coarse points around lmkit's crossing.
    coarse = crossing(lm["curve"], target)
    if coarse.get("between"):
        low, high = coarse["between"]
        done = {p["checkpoint"] for p in lm["curve"]}
        clock = lm["_clock"]
        extra = [p for p in lmkit_checkpoints(Path(lm["run_dir"])) if p.name not in done and p.name != "final"
                 and low < clock["clock"].get(int(p.name.split("-")[1]), -1) < high]
        if extra:
            lm["curve"] = sorted(lm["curve"] + evaluate_lmkit(clock, extra, shared)["points"],
                                 key=lambda p: p["train_s"])
    del lm["_clock"]
    # The cross-check: lmkit's own bf16 val_loss against the shared float32 one, at the steps both have.
    own = {p["step"]: p["val_loss"] for p in lm["own_val_loss"]}
    both = [(own[p["step"]], p["val_loss"]) for p in lm["curve"] if p["step"] in own]
    lm["own_minus_shared_max"] = max((abs(a - b) for a, b in both), default=None)
    if not args.keep_runs:
        for path in lmkit_checkpoints(Path(lm["run_dir"])):
            shutil.rmtree(path, ignore_errors=True)
    nano_time = crossing(nano["curve"], target)
    lm_time = crossing(lm["curve"], target)
    result.update({"target": target, "nanogpt_time": nano_time, "lmkit_time": lm_time,
                   "ratio": (lm_time["seconds"] / nano_time["seconds"]) if lm_time["seconds"] is not None else None,
                   "lmkit_final_val_loss": max(lm["curve"], key=lambda p: p["train_s"])["val_loss"]})
    return result


def curve_text(curve: list[dict]) -> str:
    return ", ".join(f"{p['train_s']:.0f}s:{p['val_loss']:.3f}" for p in sorted(curve, key=lambda p: p["train_s"]))


def report(results: dict) -> None:
    seeds = results["seeds"]
    print(f"\ncorpus: {results['corpus']['source']}; {results['data']['splits']['train']['tokens']:,} train tokens, "
          f"{results['data']['splits']['validation']['tokens']:,} validation tokens (first {results['val_windows']} "
          f"windows of {SEQ_LEN} scored), vocabulary {results['data']['vocab_size']:,}")
    if seeds:
        n, m = seeds[0]["nanogpt"]["parameters"], seeds[0]["lmkit"]["parameters"]
        print(f"parameters: nanoGPT {n['non_embedding']:,} non-embedding ({n['total']:,} in all); lmkit {LMKIT_MODEL} "
              f"{m['non_embedding']:,} non-embedding ({m['total']:,} in all)")
    lmkit_minutes = results.get("lmkit_minutes", results["minutes"])
    print(f"budget: {results['minutes']:g} min of training time for nanoGPT, {lmkit_minutes:g} for lmkit\n")
    print("| seed | nanoGPT val loss at budget (steps, tokens) | nanoGPT time to it | lmkit time to it (steps) | "
          "lmkit / nanoGPT | lmkit val loss at budget (steps, tokens) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in seeds:
        nano, lm = r["nanogpt"], r["lmkit"]
        last = max(lm["curve"], key=lambda p: p["step"])  # the final checkpoint: its step need not be a logged one
        lm["steps"], lm["tokens"] = max(lm["steps"], last["step"]), max(lm["tokens"], last["tokens"])
        t = r["lmkit_time"]["seconds"]
        steps = _step_at(lm["curve"], t)
        lm_cell = "not reached" if t is None else f"{'<= ' if r['lmkit_time']['at_most'] else ''}{t:.0f} s ({steps})"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"| {r['seed']} | {r['target']:.4f} ({nano['steps']:,}, {nano['tokens'] / 1e6:.2f} M) | "
              f"{r['nanogpt_time']['seconds']:.0f} s | {lm_cell} | {ratio} | {r['lmkit_final_val_loss']:.4f} "
              f"({lm['steps']:,}, {lm['tokens'] / 1e6:.2f} M) |")
    summary = results.get("summary")
    if summary:
        print(f"\nratio (lmkit time / nanoGPT time): mean {summary['ratio_mean']:.3f} +/- "
              f"{summary['ratio_std']:.3f} (std over {summary['seeds_reached']} seeds; range "
              f"{summary['ratio_min']:.3f}-{summary['ratio_max']:.3f}); "
              f"target (nanoGPT's loss) {summary['target_mean']:.4f} +/- {summary['target_std']:.4f}; aim <= {AIM}: "
              f"{'MET' if summary['met'] else 'NOT MET'}")
    for r in seeds:
        nano, lm = r["nanogpt"], r["lmkit"]
        print(f"\nseed {r['seed']} ({' then '.join(r['order'])}):")
        print(f"  nanoGPT curve (train s: val loss): {curve_text(nano['curve'])}")
        print(f"  nanoGPT: {nano['steps']} steps, median step {nano['step_s_median']:.2f} s "
              f"({NANOGPT['batch_size'] * SEQ_LEN / nano['step_s_median']:,.0f} tok/s), {nano['threads']} threads")
        print(f"  lmkit curve (train s: val loss): {curve_text(lm['curve'])}")
        print(f"  lmkit: {lm['steps']} steps, median step {lm['step_s_median']:.3f} s, first step (compile) "
              f"{lm['first_step_s']:.1f} s, {lm['overhead_s']:.0f} s of validation/checkpoints taken off its clock; "
              + ("no step with both lmkit's own val_loss and a checkpoint" if lm["own_minus_shared_max"] is None else
                 f"own bf16 val_loss within {lm['own_minus_shared_max']:.4f} of the shared float32 one"))
        print(f"  lmkit's run: {lm['first_line']}")


def _step_at(curve: list[dict], seconds: float | None) -> str:
    if seconds is None:
        return "-"
    after = [p for p in sorted(curve, key=lambda p: p["train_s"]) if p["train_s"] >= seconds]
    return f"step {after[0]['step']:,}" if after else "-"


def summarize(seeds: list[dict]) -> dict | None:
    ratios = [r["ratio"] for r in seeds if r["ratio"] is not None]
    if not ratios:
        return None
    targets = [r["target"] for r in seeds]
    spread = statistics.stdev if len(ratios) > 1 else (lambda values: 0.0)
    return {"seeds_reached": len(ratios), "seeds": len(seeds), "ratio_mean": statistics.mean(ratios),
            "ratio_std": spread(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "lmkit_seconds_mean": statistics.mean(r["lmkit_time"]["seconds"] for r in seeds if r["ratio"] is not None),
            "target_mean": statistics.mean(targets),
            "target_std": statistics.stdev(targets) if len(targets) > 1 else 0.0,
            "met": len(ratios) == len(seeds) and statistics.mean(ratios) <= AIM, "aim": AIM}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", help="nanoGPT's model.py (from a clone of karpathy/nanoGPT)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per side and seed")
    parser.add_argument("--lmkit-minutes", type=float, default=None,
                        help="lmkit's training time per seed, when it needs less than nanoGPT's to reach nanoGPT's "
                             "loss (its learning rate does not depend on --max-time, so its curve up to then is the "
                             "same); default: --minutes")
    parser.add_argument("--nanogpt-from", type=Path, default=None,
                        help="an earlier run's time_to_loss.json: take nanoGPT's curve of each seed it holds from it "
                             "(same --minutes and dataset) instead of training nanoGPT again")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, the sides alternating which runs first")
    parser.add_argument("--eval-every", type=float, default=45.0, help="training seconds between validations")
    parser.add_argument("--val-windows", type=int, default=160, help="validation windows of 256 tokens scored")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of nanoGPT and of the evaluations")
    parser.add_argument("--work", type=Path, default=OUT / "time_to_loss", help="corpus, dataset and runs")
    parser.add_argument("--keep-runs", action="store_true", help="keep lmkit's checkpoints after evaluating them")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="let lmkit's compile use torch's usual cache (default: a cold one per run)")
    parser.add_argument("--lmkit-checkpoint-every", type=int, default=None,
                        help="give lmkit this --checkpoint-every (a multiple of 10, its --log-every) for a finer curve "
                             "when it reaches the target within its first checkpoints; default: lmkit's own (200)")
    parser.add_argument("--report", action="store_true", help="print the table of benchmarks/out/time_to_loss.json")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return
    if args.report:
        report(json.loads((OUT / "time_to_loss.json").read_text()))
        return
    if not args.nanogpt:
        parser.error("--nanogpt path/to/model.py is required (from a clone of karpathy/nanoGPT)")
    args.nanogpt = str(Path(args.nanogpt).resolve().parent)
    started = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus, dataset = kjv_dataset(work)
    data = in_child("export", {"dataset": str(dataset), "out": str(work)})
    results: dict = {"corpus": corpus, "data": data, "minutes": args.minutes,
                     "lmkit_minutes": args.lmkit_minutes or args.minutes, "val_windows": args.val_windows,
                     "eval_every_s": args.eval_every, "nanogpt_recipe": NANOGPT, "lmkit_model": LMKIT_MODEL,
                     "threads": args.threads, "cores": os.cpu_count(), "seeds": []}
    print(f"corpus: {corpus['chapters']} chapters; {data['splits']['train']['tokens']:,} train tokens, "
          f"{data['splits']['validation']['tokens']:,} validation tokens, vocabulary {data['vocab_size']}",
          file=sys.stderr, flush=True)
    earlier = {}
    if args.nanogpt_from:
        before = json.loads(args.nanogpt_from.read_text())
        if before.get("minutes") != args.minutes or before.get("data", {}).get("dataset_id") != data["dataset_id"]:
            raise SystemExit(f"time_to_loss.py: --nanogpt-from {args.nanogpt_from}: its runs had another budget or "
                             "dataset")
        earlier = {r["seed"]: r for r in before["seeds"]}
    for seed in range(args.seeds):
        results["seeds"].append(one_seed(seed, args, dataset, data, work, earlier.get(seed)))
        results["summary"] = summarize(results["seeds"])
        results["seconds"] = round(time.perf_counter() - started, 1)
        (OUT / "time_to_loss.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
