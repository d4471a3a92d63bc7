"""Configuration of ``lmkit chat``: every field is a flag and a key of ``--config`` (torch-free, for --help)."""

from __future__ import annotations

from dataclasses import dataclass

from lmkit.config import option, validate
from lmkit.errors import ConfigError
from lmkit.generation.settings import SamplingSettings
from lmkit.stages.generate_config import PRECISIONS, QUANTIZATIONS


@dataclass(kw_only=True)
class ChatConfig:
    checkpoint: str = option(help="A chat model's checkpoint: finetuned with --task chat, or imported with its "
                             "chat template.", positional=True)
    system: str | None = option(None, "The system prompt (default: the one stored at finetuning, if any); /system "
                                "TEXT changes it during the conversation.")
    max_new_tokens: int = option(256, "New tokens at most per reply (fewer at the end of the turn). The history is "
                                 "cut, oldest exchanges first, to leave this much room in the model's context (at "
                                 "most half of it).")
    temperature: float = option(0.7, "Divide the logits by this; 0 = greedy (the same reply every time).")
    top_k: int = option(0, "Sample among the K most likely tokens only (0: all).")
    top_p: float = option(0.9, "Nucleus sampling: the fewest most likely tokens reaching P (1: all).")
    repetition_penalty: float = option(1.0, "Penalize tokens already in the conversation (> 1: less repetition).")
    seed: int = option(0, "Random seed: the same conversation and seed give the same reply.")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (CUDA when available).")
    precision: str = option("fp32", "Weights and activations in fp32 or bf16.", choices=PRECISIONS)
    quantize: str = option("none", "int8: int8 weights (dynamic int8 matmuls on CPU); none: as trained.",
                           choices=QUANTIZATIONS)
    threads: int = option(0, "Torch intra-op threads (0: OMP_NUM_THREADS if set, else the CPUs this process may "
                                "use, its affinity and any cgroup quota).")

    def __post_init__(self) -> None:
        problems = []
        try:
            self.sampling()
        except ConfigError as exc:
            problems.extend(exc.problems)
        if self.threads < 0:
            problems.append(f"--threads: must not be negative, got {self.threads}")
        validate(self, problems)

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                                top_p=self.top_p, repetition_penalty=self.repetition_penalty, seed=self.seed)
