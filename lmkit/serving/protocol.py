"""Request bodies of ``lmkit serve``, validated by pydantic: OpenAI's completions and chat completions (the fields
lmkit implements; unknown fields are ignored, as OpenAI-compatible servers do, but a known field of the wrong
type is a 400), and the tokenizer endpoints. A task's own endpoints declare theirs on :class:`Body`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    """What every request body may carry; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=False)

    model: str | None = None


class Sampling(Body):
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


class TokenizeRequest(Body):
    prompt: str
    add_special_tokens: bool = False


class DetokenizeRequest(Body):
    tokens: list[int]
