"""``ServeConfig``: the flags of ``shoestring serve``, the YAML keys of ``--config`` and the API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from shoestring.core.config import ArtifactInput, StageConfig

__all__ = ["ServeConfig", "ServeEngine", "ServeTask"]

ServeTask = Literal["auto", "causal-lm", "embedding", "classification", "masked-lm", "recommendation"]
ServeEngine = Literal["auto", "torch", "llama.cpp", "vllm"]


class ServeConfig(StageConfig):
    """How to serve one model over HTTP (OpenAI-compatible plus task endpoints)."""

    model: Annotated[str, ArtifactInput("model", external_ok=True)]
    """Model to serve: a packaged name, a Hugging Face folder, a .gguf file or a model artifact (LoRA adapters are merged)."""
    task: ServeTask = "auto"
    """What the model does; 'auto' reads the artifact manifest or the model config."""
    model_name: str | None = None
    """Model id reported by /v1/models and accepted in requests (default: the MODEL argument)."""
    host: str = "127.0.0.1"
    """Interface to bind; the default accepts local connections only. Any non-loopback host (e.g. 0.0.0.0 behind a proxy) is refused without --api-key or $SHOESTRING_API_KEYS."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one and prints it)."""
    api_key: list[str] = Field(default_factory=list)
    """API key clients send as 'Authorization: Bearer KEY' (repeatable). Keys in $SHOESTRING_API_KEYS (comma-separated) are added. None = no auth."""
    max_batch_size: int = Field(8, ge=1, le=256)
    """Most requests the model processes together (1 = one at a time)."""
    max_queue: int = Field(64, ge=1)
    """Most requests admitted (waiting + running); beyond it requests get 429 with Retry-After."""
    batch_timeout_ms: float = Field(5.0, ge=0)
    """How long an idle server waits for more requests before running a batch (milliseconds)."""
    request_timeout_s: float = Field(120.0, gt=0)
    """A request not finished after this many seconds is abandoned with 503 (seconds)."""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    """Largest accepted request body; bigger bodies get 413 (bytes)."""
    body_timeout_s: float = Field(30.0, gt=0)
    """A request body not fully received this long after its headers gets 408 and its connection
    closed, so slow clients (slow-loris) cannot hold connections (seconds)."""
    default_max_tokens: int = Field(256, ge=1)
    """Tokens generated when a request gives no max_tokens (tokens)."""
    max_context: int | None = None
    """Cap on prompt + generated tokens (default: the model's max_position_embeddings) (tokens)."""
    reference: Annotated[str | None, ArtifactInput("evaluation")] = None
    """Evaluation artifact (or reference.json) whose distributions drift is measured against."""
    drift_window: int = Field(500, ge=10)
    """Recent requests in the drift window (requests)."""
    drift_min_samples: int = Field(50, ge=1)
    """Requests needed in the window before drift is reported (requests)."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish before the server exits (seconds)."""
    engine: ServeEngine = "auto"
    """Generation backend: torch (our engine on the model's weights), llama.cpp (a GGUF file; an HF model is exported to f16 GGUF once), vllm (CUDA GPU with vLLM installed); 'auto' measures the ones that can run here and picks the fastest."""
    prefill_chunk: int = Field(256, ge=16, le=8192)
    """Most prompt tokens prefilled per engine step; longer prompts are split so running requests keep decoding (tokens)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the torch engine runs; 'auto' picks the GPU when torch sees one."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight precision of the torch engine. CPU: weights stored in this type, computed in float32; 'auto' is float16 (bfloat16 if a weight exceeds float16's range). GPU: 'auto' is bfloat16."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for the model (default: every core for the torch engine; cores - 1 for llama.cpp, whose
    threads spin-wait and collapse when another process takes a core)."""
