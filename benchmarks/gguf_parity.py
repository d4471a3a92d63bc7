"""Greedy tokens of lmkit against llama.cpp running lmkit's GGUF export of the same checkpoint.

Models: the demo GPT (demo/gpt/final, made by `make demo`; skipped when absent) and tiny random models of each
family lmkit imports (tests/interop/hf_models.py: Llama, Mistral, Qwen2, Qwen3 and GPT-2 built with transformers'
configs and save_pretrained, then `lmkit import`), plus two imported chat models (Qwen2's and Llama 3's templates).
Each is exported with `lmkit export --format gguf` in f32, f16 and q8_0 and loaded with llama-cpp-python.

For every prompt, lmkit's ids come from the function behind `lmkit generate --temperature 0` (Generator; the CLI
itself is run once per model and must print the same text), llama.cpp's from `Llama.tokenize` with the file's own
framing (its add_bos flag: lmkit's </s> first, nothing for GPT-2) and greedy `Llama.generate`, stopping at the
checkpoint's stop ids. lmkit never samples special tokens other than the stop ids, so llama.cpp gets the same ban
as a logits processor. A chat model's prompt is its template's rendering (lmkit's ids against llama.cpp's
tokenization of the same text, special tokens parsed). Printed per model and type: prompts whose input ids are
equal, and generated tokens equal to lmkit's up to the first difference, out of lmkit's.

    pip install 'lmkit[gguf]' llama-cpp-python   # builds llama.cpp from source (about 10 minutes on 2 cores)
    python benchmarks/gguf_parity.py [--new-tokens 32] [--demo demo/gpt/final]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
import transformers  # noqa: E402
from llama_cpp import Llama, LogitsProcessorList  # noqa: E402

from lmkit.checkpoint import read_checkpoint  # noqa: E402
from lmkit.config import resolve  # noqa: E402
from lmkit.data.chat_template import render  # noqa: E402
from lmkit.generation.generator import Generator  # noqa: E402
from lmkit.generation.settings import SamplingSettings  # noqa: E402
from lmkit.interop import export_stage, import_stage  # noqa: E402
from lmkit.interop.export_config import ExportConfig  # noqa: E402
from lmkit.interop.import_config import ImportConfig  # noqa: E402
from lmkit.progress import reporter  # noqa: E402
from tests.interop.hf_models import make_chat_model, make_hf_model  # noqa: E402

PROMPTS = ["The history of the city", "In 1990, the government", "def main():\n    return", "Hello world",
           "  two  spaces, ünïcödé and 漢字"]
TYPES = ("f32", "f16", "q8_0")


@llama_cpp.llama_log_callback
def _quiet(_level, _text, _user_data):  # llama.cpp's own log lines (context sizes, warnings) off the table
    pass


def lmkit_replies(checkpoint_path: Path, prompts: list, new_tokens: int) -> list[tuple[list[int], list[int], str]]:
    """(input ids, greedy ids, text) of each prompt, as `lmkit generate --temperature 0` decodes them."""
    generator = Generator(read_checkpoint(checkpoint_path))
    settings = SamplingSettings(temperature=0.0, max_new_tokens=new_tokens)
    encoded = [generator.encode_input(prompt) for prompt in prompts]
    keys = [prompt if isinstance(prompt, str) else json.dumps(prompt) for prompt in prompts]
    replies = generator.generate_ids(encoded, keys, settings, names=keys)
    return [(ids, reply.ids, reply.text) for ids, reply in zip(encoded, replies)]


def cli_texts(checkpoint_path: Path, prompts: list[str], new_tokens: int, work: Path) -> list[str]:
    """The completions `lmkit generate --temperature 0` prints (through --output JSONL)."""
    source, out = work / "prompts.jsonl", work / "completions.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "lmkit", "generate", str(checkpoint_path), "--input", str(source),
                    "--output", str(out), "--temperature", "0", "--max-new-tokens", str(new_tokens)],
                   check=True, capture_output=True)
    return [json.loads(line)["completion"] for line in out.read_text().splitlines()]


def llama_cpp_greedy(llm: Llama, ids: list[int], new_tokens: int, stop: set[int], banned: list[int]) -> list[int]:
    def ban(_input_ids, scores):
        scores[banned] = -np.inf
        return scores

    llm.reset()
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                              logits_processor=LogitsProcessorList([ban]) if banned else None):
        if token in stop:  # lmkit's reply ends before its stop token
            break
        out.append(token)
        if len(out) == new_tokens:
            break
    return out


def agreeing(ours: list[int], theirs: list[int]) -> int:
    count = 0
    for a, b in zip(ours, theirs):
        if a != b:
            break
        count += 1
    return count


def compare(name: str, checkpoint_path: Path, prompts: list, new_tokens: int, work: Path) -> None:
    checkpoint = read_checkpoint(checkpoint_path)
    expected = lmkit_replies(checkpoint_path, prompts, new_tokens)
    cli_note = ""
    if checkpoint.chat is None:
        texts = cli_texts(checkpoint_path, prompts, new_tokens, work)
        cli_note = "cli text equal" if texts == [text for _i, _o, text in expected] else "CLI TEXT DIFFERS"
    generator = Generator(checkpoint)
    stop, banned = set(checkpoint.stop_ids), list(generator.banned)
    for gguf_type in TYPES:
        out = work / f"{name}-{gguf_type}"
        export_stage.run(resolve(ExportConfig, {}, {"checkpoint": str(checkpoint_path), "out": str(out),
                                                   "format": "gguf", "gguf_type": gguf_type}))
        llm = Llama(model_path=str(out / "model.gguf"), n_ctx=checkpoint.model_config.block_size, logits_all=False,
                    n_threads=2, verbose=False)
        same_inputs, agree, total, whole = 0, 0, 0, 0
        for prompt, (ids, ours, _text) in zip(prompts, expected):
            if checkpoint.chat is None:
                theirs_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
            else:
                chat = checkpoint.chat
                rendered = render(chat, chat.with_system(generator.messages_of(prompt)), True, "prompt")
                theirs_ids = llm.tokenize(rendered.encode(), add_bos=True, special=True)
            same_inputs += theirs_ids == ids
            theirs = llama_cpp_greedy(llm, ids, new_tokens, stop, banned)  # from lmkit's input: the model alone
            agree += agreeing(ours, theirs)
            total += len(ours)
            whole += ours == theirs
        llm.close()
        print(f"{name:14s} {gguf_type:5s} inputs {same_inputs}/{len(prompts)}  tokens {agree:4d}/{total:<4d} "
              f"whole replies {whole}/{len(prompts)}  {cli_note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--demo", default=str(ROOT / "demo" / "gpt" / "final"))
    args = parser.parse_args()
    reporter.configure(quiet=True, verbose=False)
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's bars, for the tiny models
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p())
    work = Path(tempfile.mkdtemp(prefix="lmkit-gguf-parity-"))
    print(f"{'model':14s} {'type':5s} (input ids equal / prompts, greedy tokens equal up to the first difference)")
    if (Path(args.demo) / "manifest.json").is_file():
        compare("demo-gpt", Path(args.demo), PROMPTS, args.new_tokens, work)
    else:
        print(f"{args.demo}: absent (make demo); skipped")
    for family in ("llama", "mistral", "qwen2", "qwen3", "gpt2"):
        source = make_hf_model(family, work / f"hf-{family}")
        imported = import_stage.run(resolve(ImportConfig, {}, {"source": str(source), "out": str(work / family)}))
        compare(f"imported-{family}", imported.path, PROMPTS, args.new_tokens, work)
    for style in ("qwen2", "llama3"):
        source = make_chat_model(style, work / f"hf-chat-{style}")
        values = {"source": str(source), "out": str(work / f"chat-{style}")}
        imported = import_stage.run(resolve(ImportConfig, {}, values))
        conversations = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
        conversations.append([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}])
        compare(f"chat-{style}", imported.path, conversations, args.new_tokens, work)


if __name__ == "__main__":
    main()
