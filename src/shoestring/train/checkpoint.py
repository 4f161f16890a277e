"""Resumable checkpoints: safetensors for tensors, JSON for the rest, never pickle.

A checkpoint is a folder ``step-<N>/`` under the stage's durable work folder holding

* ``trainable.safetensors`` - every trainable parameter by name;
* ``optimizer.safetensors`` - the optimizer's per-parameter state (``<i>.<key>`` keys) and
  the torch CPU (and CUDA) RNG states;
* ``state.json`` - step, data position, optimizer hyper-parameters, Python/NumPy RNG
  states, early-stopping bookkeeping, and the metrics rows logged so far.

It is written into a temporary folder and renamed into place, so a kill mid-write leaves
the previous checkpoint intact; a failed write (a full disk) removes the temporary folder, and
the one a killed run left is removed at resume. Only the newest ``keep`` folders are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.artifact import atomic_path, atomic_write_json, sweep_dead_temps

if TYPE_CHECKING:
    import torch

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]

_PREFIX = "step-"


def _step_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.name.startswith(_PREFIX) and (d / "state.json").is_file()]
    return sorted(found, key=lambda d: int(d.name[len(_PREFIX) :]))


def latest_checkpoint(root: Path) -> Path | None:
    """Newest complete checkpoint folder under ``root``, or None; a killed run's half-written one
    is removed (it would hold its disk space for the whole resumed run)."""
    sweep_dead_temps(root, f"{_PREFIX}*")
    dirs = _step_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically and prune older ones beyond ``keep``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    final = root / f"{_PREFIX}{step:08d}"
    with atomic_path(final, folder=True) as tmp:
        params = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(params, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _optimizer_tensors(model, optimizer)
        opt_tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            opt_tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        np_state: Any = np.random.get_state()
        full_state = {
            **state,
            "step": step,
            "optimizer": opt_meta,
            "rng": {
                "python": _py_state_to_json(random.getstate()),
                "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            },
        }
        atomic_write_json(tmp / "state.json", full_state)
        shutil.rmtree(final, ignore_errors=True)
    for old in _step_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict]:
    """Flatten optimizer state into named tensors + JSON-able scalars."""
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{idx}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: str
) -> dict[str, Any]:
    """Restore parameters, optimizer state and RNGs from ``path``; return its state dict."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    params = load_file(str(path / "trainable.safetensors"), device="cpu")
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in params.items():
            named[n].copy_(t.to(named[n].device))
    tensors = load_file(str(path / "optimizer.safetensors"), device="cpu")
    opt_state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("rng."):
            continue
        idx, name = key.split(".", 1)
        target = val if name == "step" else val.to(device)
        opt_state.setdefault(int(idx), {})[name] = target
    for idx, scal in state["optimizer"]["scalars"].items():
        opt_state.setdefault(int(idx), {}).update(scal)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    random.setstate(_py_state_from_json(state["rng"]["python"]))
    np_state = state["rng"]["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    return state


def _py_state_to_json(st: tuple) -> list:
    return [st[0], list(st[1]), st[2]]


def _py_state_from_json(st: list) -> tuple:
    return (st[0], tuple(st[1]), st[2])
