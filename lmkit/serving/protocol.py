"""Request bodies of ``lmkit serve``, validated by pydantic: OpenAI's completions and chat completions
(the fields lmkit implements; unknown fields are ignored, as OpenAI-compatible servers do, but a known
field of the wrong type is a 400), and lmkit's classify, fill-mask and qa endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    model: str | None = None


class Sampling(_Request):
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)                 # not OpenAI's; vLLM and llama.cpp take it too
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class ClassifyRequest(_Request):
    input: str | list[str]
    text_pair: str | list[str] | None = None  # a pair classifier's second texts, one per input


class QARequest(_Request):
    question: str
    context: str


class FillMaskRequest(_Request):
    input: str | list[str]
    top_k: int = Field(default=5, ge=1, le=100)


class TokenizeRequest(_Request):
    prompt: str
    add_special_tokens: bool = False


class DetokenizeRequest(_Request):
    tokens: list[int]
