"""Perturbation explanations, alternatives to Integrated Gradients: Kernel SHAP (the ``shap``
package's ``KernelExplainer``) and LIME (Ribeiro et al., 2016; implemented here: a weighted
ridge fit on random feature subsets).

Both see the model through ``value(masks) -> outputs``: ``masks`` is (m, M) with 1 where a
feature (a token, or a tabular column) is kept and 0 where it is removed (a token replaced
by the mask/pad token, a column set to a background value). Checks reported like IG's:

* SHAP **additivity**: sum(phi) = f(x) - E[f(background)]; Kernel SHAP enforces it as a
  constraint, so the gap measures numerical error; ``relative_gap`` divides by
  max(|f(x) - E f|, 1e-3) and ``within_tolerance`` compares it to the tolerance.
* LIME has no completeness property: we report the local fit's weighted R^2 (how well the
  linear surrogate reproduces the model on the perturbed samples) and, for reference, the
  gap between sum(coefficients) and f(x) - f(all removed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["kernel_shap", "lime", "explain_masked"]

_FLOOR = 1e-3
Value = Callable[[np.ndarray], np.ndarray]


def kernel_shap(value: Value, n_features: int, *, samples: int, seed: int, tolerance: float,
                background: np.ndarray | None = None) -> dict[str, Any]:
    """Kernel SHAP of the all-ones mask against ``background`` masks (default: all zeros)."""
    import shap

    bg = np.zeros((1, n_features)) if background is None else background
    explainer = shap.KernelExplainer(value, bg, seed=seed)
    phi = np.asarray(explainer.shap_values(np.ones((1, n_features)), nsamples=samples, silent=True),
                     dtype=np.float64).reshape(-1)
    fx = float(value(np.ones((1, n_features)))[0])
    ef = float(np.mean(value(bg)))
    gap = abs(float(phi.sum()) - (fx - ef))
    rel = gap / max(abs(fx - ef), _FLOOR)
    return {"scores": [float(v) for v in phi], "f_x": fx, "f_baseline": ef, "gap": gap, "relative_gap": rel,
            "within_tolerance": rel <= tolerance, "tolerance": tolerance, "steps": samples,
            "method": "kernel-shap", "check": "additivity: sum(phi) = f(x) - E f(background)"}


def lime(value: Value, n_features: int, *, samples: int, seed: int, kernel_width: float = 0.25) -> dict[str, Any]:
    """LIME: ``samples`` random masks (the number of removed features uniform in 1..M, as the
    reference implementation draws them), weighted by exp(-d^2 / width^2) with d the cosine
    distance to the full input, fitted by weighted ridge regression (alpha 1)."""
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(seed)
    masks = np.ones((samples, n_features))
    for i in range(1, samples):  # row 0 stays the unperturbed input
        off = rng.choice(n_features, size=int(rng.integers(1, n_features + 1)), replace=False)
        masks[i, off] = 0.0
    y = np.asarray(value(masks), dtype=np.float64).reshape(-1)
    norms = np.linalg.norm(masks, axis=1) * np.sqrt(n_features)
    cos = np.where(norms > 0, masks.sum(1) / np.maximum(norms, 1e-12), 0.0)
    w = np.exp(-((1.0 - cos) ** 2) / kernel_width**2)
    reg = Ridge(alpha=1.0).fit(masks, y, sample_weight=w)
    r2 = float(reg.score(masks, y, sample_weight=w))
    fx = float(y[0])
    f_empty = float(value(np.zeros((1, n_features)))[0])
    coef = reg.coef_.astype(np.float64)
    return {"scores": [float(c) for c in coef], "f_x": fx, "f_baseline": f_empty,
            "gap": abs(float(coef.sum()) - (fx - f_empty)), "relative_gap": None, "within_tolerance": None,
            "tolerance": None, "steps": samples, "method": "lime", "local_r2": r2,
            "check": "no completeness property; local_r2 = weighted R^2 of the linear surrogate"}


def explain_masked(method: str, value: Value, n_features: int, *, samples: int, seed: int, tolerance: float,
                   background: np.ndarray | None = None) -> dict[str, Any]:
    """Dispatch to :func:`kernel_shap` or :func:`lime`."""
    if method == "shap":
        return kernel_shap(value, n_features, samples=samples, seed=seed, tolerance=tolerance, background=background)
    return lime(value, n_features, samples=samples, seed=seed)


def text_value(model: Any, tok: Any, ids: list[int], target: int, batch: int = 32) -> tuple[Value, list[int]]:
    """``value(masks)`` for a sequence classifier: log-probability of ``target`` with the
    masked tokens replaced by the mask token (pad/unk if the tokenizer has none). Special
    tokens ([CLS], [SEP], BOS...) are always kept; the returned positions are the features."""
    import torch

    special = set(tok.all_special_ids)
    pos = [i for i, t in enumerate(ids) if t not in special]
    fill = next(t for t in (tok.mask_token_id, tok.pad_token_id, tok.unk_token_id, 0) if t is not None)
    base = torch.tensor(ids)

    def value(masks: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(masks), batch):
                m = torch.from_numpy(np.asarray(masks[i : i + batch]) > 0.5)
                inp = base.repeat(len(m), 1)
                cols = torch.tensor(pos)
                inp[:, cols] = torch.where(m, inp[:, cols], torch.full_like(inp[:, cols], fill))
                logits = model(input_ids=inp, attention_mask=torch.ones_like(inp)).logits.float()
                out.append(torch.log_softmax(logits, -1)[:, target].numpy())
        return np.concatenate(out).astype(np.float64)

    return value, pos
