"""Request bodies (OpenAI-compatible where OpenAI defines them) and the error envelope."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "ClassifyRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "FillMaskRequest",
    "RecommendRequest",
    "error_body",
]


class _Body(BaseModel):
    # OpenAI clients send optional fields we do not use (user, logprobs=false, ...): ignore them.
    # Strict types: the server accepts exactly what its OpenAPI schema says ("stream": 0 is not a boolean).
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message text; content parts of type 'text' are joined (images are not supported)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens to generate (tokens)."""
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stop: str | list[str] | None = Field(None, max_length=4)
    """Up to 4 stop sequences (OpenAI's bound)."""
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    """Sampling seed (a 64-bit integer: torch's generators take nothing wider)."""
    stream_options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_what_is_not_implemented(cls, data: Any) -> Any:
        """OpenAI fields that would change the answer but that this server does not implement are
        refused when set (ignoring them would answer a different question); at their defaults
        they pass, as OpenAI clients send them."""
        if isinstance(data, dict):
            for name, default in _UNSUPPORTED.items():
                value = data.get(name)
                if value is not None and value != default:
                    raise ValueError(f"{name} is not supported by this server; leave it out")
        return data

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


_UNSUPPORTED: dict[str, Any] = {"logit_bias": {}, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False,
                                "top_logprobs": 0, "tools": [], "functions": [], "best_of": 1, "suffix": ""}  # fmt: skip


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False

    def prompt_text(self) -> str | None:
        """The single prompt, or None when several were sent."""
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if len(self.prompt) == 1 else None


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float"] = "float"

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ClassifyRequest(_Body):
    model: str | None = None
    input: str | list[str]

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class FillMaskRequest(_Body):
    model: str | None = None
    input: str
    """Text with one or more mask tokens (for BERT models: [MASK])."""
    top_k: int = Field(5, ge=1, le=100)


class RecommendRequest(_Body):
    model: str | None = None
    history: list[int | str] = Field(min_length=1)
    """Items the user interacted with, oldest first."""
    k: int = Field(10, ge=1, le=1000)


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope, so clients raise their usual exception types."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
