"""Typed settings of `shoestring compress`: the YAML keys and CLI flags of one compression step."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from shoestring.compress.regression import GateConfig
from shoestring.core.config import ArtifactInput, StageConfig

__all__ = ["CompressConfig", "Method"]

Method = Literal["merge", "int8-dynamic", "int8-weight", "int4-weight", "prune", "distill"]


class CompressConfig(StageConfig):
    """Settings of one compression step. An adapter parent is always merged first."""

    model: Annotated[str, ArtifactInput("model", external_ok=True)]
    """Parent model: a model artifact (full model/ or LoRA adapter/), a packaged name, a folder, a .gguf file or a hub id."""
    method: Method = "int8-dynamic"
    """merge (LoRA into the base), int8-dynamic, int8-weight, int4-weight, prune (structured) or distill (smaller student)."""
    dataset: Annotated[str | None, ArtifactInput("dataset")] = None
    """Dataset artifact: test.jsonl is the held-out text, train.jsonl feeds calibration and distillation. Default: Python's reference docs (pydoc_data.topics), every 5th topic held out."""
    task: Literal["causal-lm", "masked-lm", "classification", "embedding"] | None = None
    """Model head to load; default: the parent artifact's task, else causal-lm."""
    group_size: int = Field(32, ge=8)
    """int4-weight: input columns sharing one scale/minimum."""
    quantize_head: bool = False
    """Also quantise the output head (unties it from the embeddings; usually costs quality)."""
    mlp_keep_ratio: float = Field(1.0, gt=0.0, le=1.0)
    """prune/distill: fraction of MLP channels kept per block (rounded up to a multiple of 32)."""
    head_keep_ratio: float = Field(1.0, gt=0.0, le=1.0)
    """prune/distill: fraction of query heads kept per KV group (Llama-style models)."""
    drop_layers: int = Field(0, ge=0)
    """prune: number of transformer blocks removed (those that change the hidden state least)."""
    student_layers: int | None = Field(None, ge=1)
    """distill: blocks in the student, evenly spaced copies of the teacher's (default: half)."""
    distill_steps: int = Field(0, ge=0)
    """Distillation steps (prune: recovery steps, 0 = none; distill: 0 means 100)."""
    learning_rate: float = Field(1e-4, gt=0.0)
    """Peak AdamW learning rate for distillation (cosine decay to 0)."""
    temperature: float = Field(2.0, gt=0.0)
    """Softmax temperature of the distillation KL term."""
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the distillation KL term; 1 - alpha weights the next-token cross-entropy."""
    train_batch_size: int = Field(4, ge=1)
    """Sequences per distillation step."""
    seq_len: int = Field(128, ge=8)
    """Tokens per distillation / calibration sequence."""
    calibration_blocks: int = Field(8, ge=1)
    """Sequences used to score channels, heads and layers for pruning."""
    eval_blocks: int = Field(16, ge=1)
    """Held-out sequences for perplexity and KL."""
    eval_seq_len: int = Field(256, ge=8)
    """Tokens per held-out sequence."""
    latency_tokens: int = Field(128, ge=1)
    """Tokens in the timed forward pass (batch 1)."""
    latency_runs: int = Field(10, ge=1)
    """Timed runs per model (median reported), after 2 warm-up runs."""
    gen_tokens: int = Field(32, ge=0)
    """New tokens in the timed greedy generation (causal LMs; 0 = skip)."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch during measurement (default: torch's default)."""
    merge_tolerance: float = Field(1e-3, gt=0.0)
    """merge: largest allowed max |logit difference| between the adapter model and the merged model."""
    gate: GateConfig = GateConfig()
    """Pass/fail thresholds (YAML): max_ppl_increase_pct, max_kl, min_speedup, min_tokens_per_s_ratio, min_cosine, max_size_ratio, min_agreement."""
    gate_action: Literal["fail", "warn"] = "fail"
    """What a failed gate does: fail (error, exit 2, no artifact) or warn (artifact kept, marked failed)."""
