"""Helpers for the training tests (imported by conftest and tests)."""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path
from typing import Any

from rich.console import Console


def write_dataset(root: Path, train: list[dict[str, Any]], validation: list[dict[str, Any]] | None = None) -> Path:
    """A dataset artifact folder (the curate stage's contract) holding these records."""
    root.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train", train), ("validation", validation or []), ("test", [])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    digest = hashlib.sha256((root / "train.jsonl").read_bytes()).hexdigest()
    manifest = {"kind": "dataset", "stage": "curate", "hash": digest, "stats": {"kept": len(train)}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def pydoc_chats(n: int) -> list[dict[str, Any]]:
    """Chat records built from Python's own reference documentation (no internet)."""
    from pydoc_data.topics import topics

    out = []
    for i, (key, text) in enumerate(sorted(topics.items())[:n]):
        answer = " ".join(text.split())[:300]
        out.append(
            {
                "id": f"doc{i}",
                "text": text[:1500],
                "messages": [
                    {"role": "user", "content": f"What does the Python reference say about {key}?"},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return out


def make_ctx(tmp: Path, dataset: Path | None = None) -> types.SimpleNamespace:
    """The parts of a ``StageContext`` the trainers read: out/work folders, inputs, a quiet console."""
    out, work = tmp / "out", tmp / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    inputs = {"dataset": types.SimpleNamespace(path=dataset)} if dataset else {}
    return types.SimpleNamespace(out_dir=out, work_dir=work, inputs=inputs, console=Console(quiet=True), extra_manifest={})
