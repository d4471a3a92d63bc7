"""Configuration of ``lmkit generate``: every field is a flag and a key of ``--config``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lmkit.config import flag_name, option, validate
from lmkit.errors import ConfigError
from lmkit.generation.settings import SamplingSettings, parse_stop

# Spelled here so that parsing flags and --help do not import torch (a test keeps them equal to the modules').
PRECISIONS = ("fp32", "bf16")
QUANTIZATIONS = ("none", "int8")
TRUNCATIONS = ("left", "error")


@dataclass(kw_only=True)
class GenerateConfig:
    # -- what to run, on what --------------------------------------------------------------------
    checkpoint: str = option(help="Checkpoint: a causal LM or SFT model (text), a chat model (replies), a BERT "
                             "(fill-mask) or a classifier (labels).", positional=True)
    prompt: str | None = option(None, "Text to continue; for a BERT, text with [MASK]; for a classifier, text to "
                                "label. Without it: --prompt-file, --input, --interactive, or stdin.",
                                positional=True)
    prompt_file: str | None = option(None, "Read the prompt from this file ('-': stdin); one final newline is "
                                     "dropped. Fill-mask and classifiers: one text per line.")
    text_pair: str | None = option(None, "A classifier finetuned on pairs (NLI, paraphrase): the second text, "
                                   "classified together with PROMPT.")
    input: str | None = option(None, "JSONL file of records with a \"prompt\" (text generation) or \"text\" "
                               "(fill-mask, classifiers; a pair classifier also reads \"text_pair\") field; results "
                               "are written as JSONL records that keep every input field.")
    question: str | None = option(None, "A question-answering (qa) checkpoint: the question, answered from --context "
                                  "or --context-file (many questions: --input JSONL records with \"question\" and "
                                  "\"context\").")
    context: str | None = option(None, "With --question: the text to find the answer in.")
    context_file: str | None = option(None, "With --question: read the context from this file ('-': stdin), as "
                                      "it is.")
    messages: str | None = option(None, "A chat model: a JSONL file ('-': stdin) of conversations, one a line, in "
                                  "OpenAI's layout {\"messages\": [{\"role\": \"system\" | \"user\" | "
                                  "\"assistant\", \"content\": ...}]} or ShareGPT's {\"conversations\": [{\"from\", "
                                  "\"value\"}]}, each ending with the user's turn: the model writes the assistant's "
                                  "reply (a record with \"reply\"). For a conversation on the terminal: lmkit chat.")
    system: str | None = option(None, "A chat model: the system prompt of conversations that have none (default: "
                                "the one stored at finetuning, if any).")
    output: str | None = option(None, "Write the results as JSONL here (atomically: the file appears complete or "
                                "not at all) instead of printing them.", short="-o")
    force: bool = option(False, "Overwrite an existing --output file.")
    interactive: bool = option(False, "Read prompts line by line from the terminal and answer each (Ctrl-D or "
                               "'exit' ends).", short="-i")
    # -- sampling (text generation) ------------------------------------------------------------------
    max_new_tokens: int = option(128, "New tokens at most per completion (fewer at </s>, a stop string or the end "
                                 "of the model's context).")
    temperature: float = option(1.0, "Divide the logits by this; 0 = greedy (always the most likely token).")
    top_k: int = option(0, "Sample among the K most likely tokens only (0: all).")
    top_p: float = option(1.0, "Sample among the fewest most likely tokens whose probabilities reach P "
                          "(nucleus sampling; 1: all).")
    min_p: float = option(0.0, "Drop tokens less likely than MIN_P times the most likely one (0: off).")
    repetition_penalty: float = option(1.0, "Penalize tokens already in the prompt or output (> 1: less "
                                       "repetition; 1: off).")
    stop: str = option("", "Stop strings, comma-separated: a completion ends before the first one (not included). "
                       "Escapes: \\n newline, \\t tab, \\, comma, \\\\ backslash.")
    seed: int = option(0, "Random seed: the same seed gives the same text, whatever the batch.")
    num_samples: int = option(1, "Completions per prompt (needs --temperature > 0).")
    truncate: str = option("left", "A prompt longer than the model's context: left keeps its end (with a "
                           "warning; a conversation loses its oldest turns), error refuses it.", choices=TRUNCATIONS)
    start_token: bool | None = option(None, "Put the tokenizer's start token before a plain prompt (lmkit's </s>, "
                                      "GPT-2's <|endoftext|>, Llama's <s>), as lmkit's pretraining packs documents; "
                                      "--no-start-token: the prompt's tokens alone. Unset: the model's own rule: "
                                      "lmkit's models read </s> first, an imported model's prompt is framed as its "
                                      "own tokenizer frames it (transformers' tokenizer(prompt)), so that greedy "
                                      "decoding continues as transformers does.")
    echo: bool = option(False, "Print each prompt before its completion (plain-text output).")
    # -- fill-mask -----------------------------------------------------------------------------------
    candidates: int = option(5, "Fill-mask: candidates shown for each [MASK].")
    # -- how to compute ------------------------------------------------------------------------------
    batch_size: int = option(8, "Prompts or texts computed together.")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (CUDA when available).")
    precision: str = option("fp32", "Weights and activations in fp32 or bf16.", choices=PRECISIONS)
    quantize: str = option("none", "int8: int8 weights (dynamic int8 matmuls on CPU); none: as trained.",
                           choices=QUANTIZATIONS)
    threads: int = option(0, "Torch intra-op threads (0: OMP_NUM_THREADS if set, else the CPUs this process "
                                "may use, its affinity and any cgroup quota).")
    compile: bool | None = option(None, "Compile the model with torch.compile (text generation): faster tokens "
                                  "after a compile of 3-15 s (cached by torch). Unset: auto, on for jobs of "
                                  "50,000+ new tokens (prompts x samples x --max-new-tokens).")

    def __post_init__(self) -> None:
        problems = []
        sources = [flag for flag, value in (("PROMPT", self.prompt), ("--prompt-file", self.prompt_file),
                                            ("--input", self.input), ("--messages", self.messages))
                   if value is not None]
        if len(sources) > 1:
            problems.append(f"{' and '.join(sources)}: give the prompts one way only")
        if self.interactive and sources:
            problems.append(f"--interactive and {sources[0]}: interactive mode reads the prompts from the terminal")
        if self.interactive and self.output:
            problems.append("--interactive and --output: interactive mode prints its answers")
        if self.text_pair is not None and self.prompt is None:
            problems.append("--text-pair: is the second text of PROMPT; give PROMPT too (many pairs: --input JSONL "
                            "records with \"text\" and \"text_pair\")")
        if self.question is not None:
            if sources:
                problems.append(f"--question and {sources[0]}: give the questions one way only")
            if (self.context is None) == (self.context_file is None):
                problems.append("--question: needs the text to answer from: --context TEXT or --context-file FILE "
                                "(one of them)")
        elif self.context is not None or self.context_file is not None:
            problems.append(f"{'--context' if self.context is not None else '--context-file'}: goes with --question")
        if self.force and not self.output:
            problems.append("--force: only applies to --output")
        for name in ("num_samples", "candidates", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{flag_name(name)}: must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            problems.append(f"--threads: must not be negative, got {self.threads}")
        try:
            stops = parse_stop(self.stop)
        except ValueError as exc:
            problems.append(f"--stop: {exc}")
            stops = ()
        try:
            SamplingSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                             top_p=self.top_p, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                             stop=stops, seed=self.seed)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if self.num_samples > 1 and self.temperature == 0:
            problems.append(f"--num-samples {self.num_samples} with --temperature 0: greedy decoding gives the same "
                            "text every time; set a temperature > 0")
        validate(self, problems)

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                                top_p=self.top_p, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                                stop=parse_stop(self.stop), seed=self.seed)

    def changed_flags(self, names: tuple[str, ...]) -> list[str]:
        """The flags among ``names`` set to something other than their defaults."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return [flag_name(name) for name in names if getattr(self, name) != defaults[name]]
