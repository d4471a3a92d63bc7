"""Configuration of ``lmkit serve``: every field is a flag and a key of ``--config`` (torch- and FastAPI-free,
so that ``--help`` loads neither)."""

from __future__ import annotations

from dataclasses import dataclass

from lmkit.config import option, validate
from lmkit.units import parse_duration, parse_size


@dataclass(kw_only=True)
class ServeConfig:
    checkpoint: str = option(help="Checkpoint to serve: a text model (gpt/lstm clm or sft), a chat model, a "
                             "classifier, a masked LM or a question-answering (span) model.", positional=True)
    host: str = option("127.0.0.1", "Address to listen on (the default is this machine only; 0.0.0.0 for all: "
                       "without an API key, a warning).")
    port: int = option(8000, "TCP port.")
    api_key: str | None = option(None, "Require 'Authorization: Bearer KEY' on the API (/v1/*, the tokenizer "
                                 "endpoints) and /metrics; /health, /health/live, /health/ready and the chat page "
                                 "(/) stay open, the page sending the key typed into it (default: the LMKIT_API_KEY "
                                 "environment variable, if set).")
    model_name: str | None = option(None, "The model's id in /v1/models and responses (default: the checkpoint's "
                                    "run directory name).")
    device: str = option("auto", "cpu, cuda, cuda:N or auto.")
    precision: str = option("fp32", "Weights in fp32 or bf16.", choices=("fp32", "bf16"))
    max_batch: int = option(32, "Completion rows decoded together at most: the KV cache's slots, each as long as "
                            "the model's context (memory: max-batch x block size x layers x 2 x KV width). Also "
                            "the most items a classification, fill-mask or QA call reads at once.")
    scheduler: str = option("auto", "How completions share the model: continuous (rows join and leave the running "
                            "batch at every step, whatever their sampling settings; transformers), dynamic "
                            "(requests of equal settings decode together until the longest ends) or auto "
                            "(continuous, dynamic for an LSTM).", choices=("auto", "continuous", "dynamic"))
    prefill_chunk: int = option(256, "Continuous: prompt tokens read per step at most, all new requests together, "
                                "so that a long prompt delays the running rows by one chunk a step.")
    prefix_cache_tokens: int = option(4096, "Continuous: prompt tokens whose keys and values are kept for reuse by "
                                      "later prompts that start the same way (a system prompt, a chat's earlier "
                                      "turns), in blocks of 16, least recently used forgotten first; 0 = off.")
    batch_wait: str = option("5ms", "Dynamic: how long the first request of a batch waits for others to join, "
                             "e.g. 5ms.")
    max_queue: int = option(256, "Requests waiting at most; more are refused with 503 and Retry-After.")
    timeout: str = option("60s", "Longest a request may take, queueing included (504 after it).")
    max_tokens: int = option(512, "The largest max_tokens a request may ask for.")
    max_body: str = option("1MB", "Largest request body (413 above it).")
    grace: str = option("10s", "On SIGTERM: how long in-flight requests may take to finish before exit (143).")
    compile: bool | None = option(None, "Compile a text model with torch.compile before serving (start-up takes "
                                  "3-40 s more, cached by torch; decoding is then 1.3-1.5x faster on CPU). Unset: "
                                  "auto, on where torch can compile.")

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"--port: must be in 1..65535, got {self.port}")
        for name in ("max_batch", "max_queue", "max_tokens", "prefill_chunk"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')}: must be at least 1")
        if self.prefix_cache_tokens < 0:
            problems.append("--prefix-cache-tokens: must be 0 (off) or positive")
        for name in ("batch_wait", "timeout", "grace"):
            try:
                seconds = parse_duration(getattr(self, name))
            except ValueError as exc:
                problems.append(f"--{name.replace('_', '-')}: {exc}")
                continue
            if name == "timeout" and seconds <= 0:
                problems.append("--timeout: must be positive")
        try:
            if parse_size(self.max_body) < 1:
                raise ValueError("must be at least 1 byte")
        except ValueError as exc:
            problems.append(f"--max-body: {exc}")
        validate(self, problems)


@dataclass(frozen=True)
class ServeOptions:
    """What the HTTP side needs of the settings, resolved (a running server's, not flags)."""

    model_name: str
    api_key: str | None = None
    max_tokens: int = 512          # the largest max_tokens a request may ask for
    timeout: float = 60.0          # seconds a request may take, queueing included
    max_body: int = 1 << 20        # bytes of a request body
    log_requests: bool = True
