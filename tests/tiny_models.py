"""Tiny Hugging Face models built from configs, with the packaged models' real tokenizers,
and the short training run the distributed tests compare across executors.

Shared by the test packages' conftests (importable because pytest puts tests/ on sys.path
for tests/conftest.py). Each package picks its own sizes; the building is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.models import hf_folder

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from shoestring.core.artifact import Artifact


def save_tiny_llama(
    out: Path, *, hidden: int, intermediate: int, layers: int, max_positions: int = 512, **extra: Any
) -> Path:
    """A Llama (4 query heads, 2 KV heads: GQA) with SmolLM2's tokenizer, saved to ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, sizes = _tokenizer_and_sizes("smollm2-135m-instruct", hidden, intermediate, layers, max_positions)
    cfg = LlamaConfig(**sizes, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
    return _save(out, tok, lambda: LlamaForCausalLM(cfg))


def save_tiny_bert(
    out: Path, model_cls: str, *, hidden: int, intermediate: int, layers: int, max_positions: int
) -> Path:
    """A BERT (``model_cls`` from transformers, e.g. BertModel) with all-MiniLM's tokenizer."""
    import transformers
    from transformers import BertConfig

    tok, sizes = _tokenizer_and_sizes("all-minilm-l6-v2", hidden, intermediate, layers, max_positions)
    return _save(out, tok, lambda: getattr(transformers, model_cls)(BertConfig(**sizes)))


def _tokenizer_and_sizes(packaged: str, hidden: int, intermediate: int, layers: int,
                         max_positions: int) -> tuple[Any, dict[str, int]]:
    """The packaged model's tokenizer and the config sizes both tiny models share (4 heads)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_folder(packaged))
    return tok, {"vocab_size": len(tok), "hidden_size": hidden, "intermediate_size": intermediate,
                 "num_hidden_layers": layers, "num_attention_heads": 4, "max_position_embeddings": max_positions}


def _save(out: Path, tok: Any, build: Callable[[], Any]) -> Path:
    """Build the model from seed 0 (every tiny model is the same across runs) and save it with ``tok``."""
    import torch

    torch.manual_seed(0)
    build().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def train_two_device_sft(
    ws: Path, dataset: Path, model: Path, *, on_cluster: bool = False, console: Console | None = None, **extra: object
) -> Artifact:
    """Three steps of full SFT of ``model`` on two devices (gloo on CPU), run by the workspace as
    ``shoestring train`` runs it. ``on_cluster``: placed on the connected cluster, as a recipe
    with ``cluster:`` would be (unless ``extra`` names an executor). ``console``: where the run's
    lines go (default: nowhere)."""
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.cluster import place_on_cluster
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace

    stage = get_stage("train")
    cfg = stage.config.model_validate({
        "dataset": str(dataset), "model": str(model), "task": "sft", "method": "full", "seq_len": 64,
        "micro_batch_size": 2, "max_steps": 3, "lr": 1e-3, "val_max_examples": 8, "progress": False,
        "tracking": {"tensorboard": False}, "devices": 2, "threads": 1, **extra,
    })  # fmt: skip
    if on_cluster and "executor" not in extra:
        cfg = place_on_cluster(cfg)
    console = console or Console(stderr=True, quiet=True)
    return Workspace(ws, console=console).run(stage, cfg, {"dataset": Artifact.load(dataset)}).artifact
