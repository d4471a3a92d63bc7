"""Benchmark chat finetuning on conversations whose answer depends on an earlier turn, over several seeds.

The demo's conversations (`lmkit demo-corpus`: chats.jsonl, chats-test.jsonl) show a docstring in the first user
turn; the final user turn asks what kind of object it documents (module, class or function), which only the
first turn tells. The demo GPT is finetuned with the demo's settings (examples/finetune-chat.toml) two ways:

* multi-turn: on the conversations as they are (the loss on both assistant turns);
* single-turn: on each exchange as a conversation of its own (the system prompt, one user turn, the reply), the
  single-turn finetuning lmkit's SFT and Alpaca-style data do: the question about the kind arrives without
  the docstring.

Each is scored by `lmkit evaluate --task chat` on the held-out conversations' final turn (exact match: the kind,
chrF), with the share of replies that stop at the end-of-turn token before --max-new-tokens (stop_rate), and the
echo of the last user turn as the baseline; the paired difference per seed is printed.

Then the first multi-turn model answers each held-out conversation three ways, greedily: as `lmkit chat` does (its
ChatSession), through `lmkit serve` with the openai client, and through transformers on its `lmkit export`
(apply_chat_template, then generate); the script counts the conversations where the three replies are identical.

    python benchmarks/chat.py                      # 3 seeds: about 4 minutes on 2 cores once the demo GPT exists
    python benchmarks/chat.py --seeds 1 --work /tmp/demo

The demo's corpus and GPT come from `make -C examples` in --work (nothing is redone when they are up to date).
Results go to stdout (with a markdown table) and benchmarks/out/chat.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmkit.config import load_toml, resolve
from lmkit.progress import reporter
from lmkit.stages import evaluate, finetune
from lmkit.stages.evaluate_config import EvaluateConfig
from lmkit.stages.finetune_config import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
SETTINGS = ROOT / "examples" / "finetune-chat.toml"
METRICS = ("exact_match", "chrf", "stop_rate")


def build_demo(work: Path) -> None:
    lmkit = Path(sys.executable).parent / "lmkit"
    targets = [f"{work.resolve()}/gpt/final/manifest.json", f"{work.resolve()}/corpus/docstrings.jsonl"]
    subprocess.run(["make", "--no-print-directory", "-C", str(ROOT / "examples"), f"LMKIT={lmkit}",
                    f"WORK={work.resolve()}", *targets], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(lmkit), "demo-corpus", "--out", str(work / "corpus")], check=True, stdout=subprocess.DEVNULL)


def single_turn(records: list[dict]) -> list[dict]:
    """Each exchange of each conversation as a conversation of its own, after the system prompt."""
    split = []
    for record in records:
        messages = record["messages"]
        system = [m for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        for i in range(0, len(turns) - 1, 2):
            split.append({"messages": [*system, turns[i], turns[i + 1]]})
    return split


def score(base: Path, data: Path, test: Path, seed: int, scratch: Path) -> dict:
    values = {**load_toml(SETTINGS), "base": str(base), "data": str(data), "out": str(scratch / "run"),
              "seed": seed}
    started = time.perf_counter()
    checkpoint = finetune.run(resolve(FinetuneConfig, {}, values)).checkpoint.path
    seconds = time.perf_counter() - started
    report = evaluate.run(resolve(EvaluateConfig, {}, {"checkpoint": str(checkpoint), "data": [str(test)],
                                                       "baseline": True, "max_new_tokens": 16,
                                                       "precision": "fp32"})).report
    metrics = report["metrics"]
    return {**{m: metrics[m] for m in METRICS}, **{f"baseline_{m}": metrics[f"baseline_{m}"] for m in METRICS
                                                   if f"baseline_{m}" in metrics},
            "train_seconds": round(seconds, 1), "conversations": sum(1 for _ in data.open())}


def parity(checkpoint: Path, test: Path, scratch: Path) -> dict:
    """How many held-out conversations get the same greedy reply from lmkit chat, lmkit serve and transformers."""
    import os
    import socket
    import urllib.request

    import openai
    import torch
    import transformers

    from lmkit.checkpoint import read_checkpoint
    from lmkit.generation.chat import ChatSession
    from lmkit.generation.generator import Generator
    from lmkit.generation.settings import SamplingSettings

    lmkit = str(Path(sys.executable).parent / "lmkit")
    conversations = [json.loads(line)["messages"][:-1] for line in test.open()]
    generator = Generator(read_checkpoint(checkpoint))
    ours = []
    for messages in conversations:
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        session = ChatSession(generator, SamplingSettings(temperature=0.0, max_new_tokens=16), system)
        session.history = [m for m in messages[:-1] if m["role"] != "system"]
        ours.append(session.reply(messages[-1]["content"])[0].text)
    subprocess.run([lmkit, "export", str(checkpoint), "--format", "hf", "--out", str(scratch / "hf")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(scratch / "hf"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(scratch / "hf"), dtype=torch.float32).eval()
    theirs = []
    for messages in conversations:
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        new = model.generate(**inputs, do_sample=False, max_new_tokens=16)[0, inputs["input_ids"].shape[1]:]
        theirs.append(tokenizer.decode(new, skip_special_tokens=True))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([lmkit, "--quiet", "serve", str(checkpoint), "--port", str(port), "--no-compile"],
                              env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("lmkit serve did not start") from None
                time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        served = [client.chat.completions.create(model="chat", messages=messages, max_tokens=16, temperature=0)
                  .choices[0].message.content for messages in conversations]
    finally:
        server.terminate()
        server.wait(timeout=30)
    same = sum(a == b == c for a, b, c in zip(ours, served, theirs, strict=True))
    return {"conversations": len(conversations), "identical": same,
            "examples": [{"chat": a, "serve": b, "transformers": c} for a, b, c in list(zip(ours, served, theirs))[:3]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "demo", help="the demo directory (built if missing)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    build_demo(args.work)
    base, corpus = args.work / "gpt" / "final", args.work / "corpus"
    runs: dict[str, list[dict]] = {"multi-turn": [], "single-turn": []}
    with tempfile.TemporaryDirectory(prefix="lmkit-chat-bench-") as scratch:
        single = Path(scratch) / "single-turn.jsonl"
        records = [json.loads(line) for line in (corpus / "chats.jsonl").open()]
        single.write_text("".join(json.dumps(r) + "\n" for r in single_turn(records)))
        reporter.configure(quiet=True)
        for seed in range(args.seeds):
            for name, data in (("multi-turn", corpus / "chats.jsonl"), ("single-turn", single)):
                result = score(base, data, corpus / "chats-test.jsonl", seed, Path(scratch) / f"{name}-{seed}")
                runs[name].append(result)
                print(f"seed {seed} {name}: " + ", ".join(f"{m} {result[m]:.3f}" for m in METRICS), flush=True)
                if seed == 0 and name == "multi-turn":
                    same = parity(Path(scratch) / f"{name}-{seed}" / "run" / "final", corpus / "chats-test.jsonl",
                                  Path(scratch))
                    print(f"greedy replies identical in lmkit chat, lmkit serve and transformers: "
                          f"{same['identical']} of {same['conversations']} conversations", flush=True)
    summary = {name: {m: {"mean": statistics.mean(r[m] for r in rows),
                          "sd": statistics.stdev(r[m] for r in rows) if len(rows) > 1 else 0.0} for m in METRICS}
               for name, rows in runs.items()}
    differences = [m["exact_match"] - s["exact_match"]
                   for m, s in zip(runs["multi-turn"], runs["single-turn"], strict=True)]
    summary["multi_minus_single_exact_match"] = differences
    summary["echo_baseline_exact_match"] = runs["multi-turn"][0].get("baseline_exact_match")
    summary["parity"] = same
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "chat.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n")
    print("\n| finetuned on | exact match (the kind) | chrF | stop rate |\n| --- | --- | --- | --- |")
    for name in runs:
        row = summary[name]
        print(f"| {name} | {row['exact_match']['mean']:.3f} ± {row['exact_match']['sd']:.3f} | "
              f"{row['chrf']['mean']:.1f} ± {row['chrf']['sd']:.1f} | {row['stop_rate']['mean']:.3f} |")
    print(f"\nmulti-turn minus single-turn exact match, per seed: {', '.join(f'{d:+.3f}' for d in differences)}; "
          f"echo baseline {summary['echo_baseline_exact_match']:.3f}")


if __name__ == "__main__":
    main()
