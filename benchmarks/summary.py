"""The speed ratios against the peers, read from the benchmarks' last results (benchmarks/out/*.json).

    python benchmarks/summary.py  # after benchmarks/{preprocess,pretrain,generate,finetune_peer}.py (make bench)

Pretraining: lmkit's tokens/s over nanoGPT's (or over the nanoGPT-shaped baseline when nanoGPT was not
given), in the precision --precision auto picks. Generation: lmkit's tokens/s over transformers' generate,
at batch 1 and 8, eager and compiled, and the share of the memory-bandwidth bound at batch 1.
Preprocessing: lmkit preprocess with 2 workers over 2 x one-core SentencePiece encoding, and over datatrove
(the same pipeline, benchmarks/preprocess_peer.py). Finetuning: lmkit's
examples/s over transformers' Trainer on all-MiniLM-L6-v2, with test accuracy and peak memory.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def lines(results: dict[str, dict | None]) -> list[str]:
    rows = []
    pretrain = results.get("pretrain")
    if pretrain and "aim" in pretrain:
        aim = pretrain["aim"]
        rows.append(f"pretrain: lmkit / {aim['reference']} = {aim['ratio']:.2f}x tokens/s in {aim['precision']} "
                    f"(aim >= {aim['aim']}x: {'met' if aim['met'] else 'not met'})")
    else:
        rows.append("pretrain: no results (python benchmarks/pretrain.py)")
    generate = results.get("generate")
    if generate:
        ratios = ", ".join(f"{name} {value:.2f}x" for name, value in generate["ratios"].items())
        share = generate["bound_share_batch1"]
        rows.append(f"generate: lmkit / transformers: {ratios} (aim >= 1.5x); batch 1 at "
                    f"{share['lmkit']:.0%} (eager) and {share['lmkit compiled']:.0%} (compiled) of the bandwidth "
                    "bound (aim >= 60%)")
    else:
        rows.append("generate: no results (python benchmarks/generate.py)")
    preprocess = results.get("preprocess")
    if preprocess:
        runs = preprocess["lmkit"]
        two = runs["2"]
        rows.append(f"preprocess: 2 workers / (2 x sentencepiece encode) = {two['ratio_to_ceiling']:.2f} (aim >= "
                    f"0.9; the tokenizing pass alone {two['tokenizing_pass_ratio']:.2f}"
                    + "".join(f"; {name}: {run['ratio_to_ceiling']:.2f}" for name, run in runs.items()
                              if not name.isdigit())
                    + ")" + (f"; peak RSS x{preprocess['double']['rss_growth']:.2f} when the corpus doubles"
                             if "double" in preprocess else ""))
    else:
        rows.append("preprocess: no results (python benchmarks/preprocess.py)")
    peer = results.get("preprocess_peer")
    if peer and peer.get("datatrove"):
        ratios = ", ".join(f"{run['ratio']:.2f}x against its {words} words" for words, run in peer["datatrove"].items())
        rows.append(f"preprocess: lmkit / datatrove MB/s end to end = {ratios} (aim >= {peer['aim']}x)")
    else:
        rows.append("preprocess: no datatrove results (python benchmarks/preprocess_peer.py)")
    finetune = results.get("finetune_peer")
    if finetune and "ratio" in finetune:
        mine, theirs = finetune["sides"]["lmkit"], finetune["sides"]["trainer"]
        rows.append(f"finetune: lmkit / transformers Trainer = {finetune['ratio']:.2f}x examples/s on "
                    f"{finetune['model']} (aim >= 1.5x); test accuracy {mine['accuracy']['mean']:.3f} against "
                    f"{theirs['accuracy']['mean']:.3f}; peak RSS {mine['peak_rss_mb']['mean']:,.0f} MB against "
                    f"{theirs['peak_rss_mb']['mean']:,.0f}")
    else:
        rows.append("finetune: no results (python benchmarks/finetune_peer.py)")
    return rows


def main() -> None:
    results = {}
    for name in ("pretrain", "generate", "preprocess", "preprocess_peer", "finetune_peer"):
        path = OUT / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else None
    print("\n".join(lines(results)))


if __name__ == "__main__":
    main()
