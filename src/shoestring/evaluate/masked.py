"""Masked-LM / fill-mask evaluation: mask a seeded 15% of each record's tokens, report top-1
and top-K accuracy of recovering them and the masked-token loss, with bootstrap CIs, a paired
comparison, report and drift reference (``input_tokens``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.artifact import atomic_write_json, atomic_write_text
from shoestring.core.errors import ShoestringError
from shoestring.evaluate.config import model_spec
from shoestring.evaluate.drift import build_reference
from shoestring.evaluate.report import Report, fmt_interval, table
from shoestring.evaluate.stats import bootstrap_ci, paired_comparison, ratio_metric

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext
    from shoestring.evaluate.config import EvaluateConfig

__all__ = ["evaluate_masked_lm", "score_masked"]

MASK_FRACTION = 0.15


def score_masked(spec: str, texts: list[str], cfg: EvaluateConfig) -> dict[str, Any]:
    """Per record: masked positions, hits at rank 1 and within K, summed NLL of the originals."""
    import torch

    from shoestring.models import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    model = load_model(spec, "masked-lm", dtype=torch.float32).eval()
    if tok.mask_token_id is None:
        raise ShoestringError(f"evaluate: {spec} has no mask token; use --task causal-lm")
    k_max = max(cfg.k)
    rows: dict[str, list[float]] = {"masked": [], "top1": [], **{f"top{k}": [] for k in cfg.k}, "nll": [], "tokens": []}
    special = set(tok.all_special_ids)
    with torch.inference_mode():
        for i, text in enumerate(texts):
            ids = list(tok(text, truncation=True, max_length=cfg.max_seq_len)["input_ids"])
            cand = [j for j, t in enumerate(ids) if t not in special]
            rng = np.random.default_rng(cfg.seed + i)  # same positions for every model with this tokenizer
            n = max(1, round(MASK_FRACTION * len(cand))) if cand else 0
            pos = sorted(rng.choice(cand, size=n, replace=False).tolist()) if n else []
            inp = torch.tensor([ids])
            if pos:
                inp[0, pos] = tok.mask_token_id
            logits = model(input_ids=inp).logits[0].float()  # (T, V)
            truth = torch.tensor([ids[j] for j in pos], dtype=torch.long)
            lp = torch.log_softmax(logits[pos], -1) if pos else torch.zeros(0, logits.shape[-1])
            top = lp.topk(k_max, -1).indices if pos else torch.zeros(0, k_max, dtype=torch.long)
            rows["masked"].append(len(pos))
            rows["top1"].append(int((top[:, 0] == truth).sum()) if pos else 0)
            for k in cfg.k:
                rows[f"top{k}"].append(int((top[:, :k] == truth[:, None]).any(1).sum()) if pos else 0)
            rows["nll"].append(float(-lp.gather(1, truth[:, None]).sum()) if pos else 0.0)
            rows["tokens"].append(len(ids))
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}


def evaluate_masked_lm(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    from shoestring.evaluate.lm import read_records

    if "dataset" not in ctx.inputs:
        raise ShoestringError("evaluate: masked-lm needs --dataset with text records")
    recs, bad = read_records(ctx.inputs["dataset"].path / f"{cfg.split}.jsonl", cfg.max_records)
    texts = [str(r[cfg.text_field]) for r in recs if isinstance(r.get(cfg.text_field), str) and r[cfg.text_field].strip()]
    if not texts:
        raise ShoestringError(f"evaluate: no '{cfg.text_field}' text in {cfg.split}.jsonl")
    kw: dict[str, Any] = {"n_boot": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed}

    def block(spec: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        s = score_masked(spec, texts, cfg)
        out: dict[str, Any] = {"spec": spec, "records": len(texts), "masked_tokens": int(s["masked"].sum())}
        for name in ["top1", *[f"top{k}" for k in cfg.k]]:
            out[f"{name}_accuracy"] = bootstrap_ci(np.stack([s[name], s["masked"]], 1), ratio_metric, **kw)
        out["masked_loss"] = bootstrap_ci(np.stack([s["nll"], s["masked"]], 1), ratio_metric, **kw)
        return out, s

    spec = model_spec("model", cfg, ctx)
    assert spec is not None
    main, s_main = block(spec)
    metrics: dict[str, Any] = {"task": "masked-lm", "split": cfg.split, "records_malformed": dict(bad),
                               "mask_fraction": MASK_FRACTION, "model": main}
    other = model_spec("compare", cfg, ctx)
    if other is not None:
        metrics["compare"], s_cmp = block(other)
        if np.array_equal(s_main["masked"], s_cmp["masked"]):
            w = s_main["masked"]
            metrics["comparison"] = {"top1_accuracy": paired_comparison(
                s_main["top1"] / np.maximum(w, 1), s_cmp["top1"] / np.maximum(w, 1), weights=w, **kw)}
    atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    atomic_write_json(ctx.out_dir / "reference.json", build_reference({"input_tokens": s_main["tokens"].tolist()}, {}))
    names = [n for n in main if n.endswith("_accuracy") or n == "masked_loss"]
    rep = Report(f"Evaluation: {spec}", f"masked-lm, {len(texts)} records, {MASK_FRACTION:.0%} of tokens masked "
                 f"(seeded per record, the same positions for every model); {cfg.confidence:.0%} bootstrap CIs.")
    rep.add("Fill-mask accuracy", table(["role", "model", "masked tokens", *names],
                                        [[r, metrics[r]["spec"], metrics[r]["masked_tokens"],
                                          *[fmt_interval(metrics[r][n]) for n in names]]
                                         for r in ("model", "compare") if r in metrics]))
    if "comparison" in metrics:
        c = metrics["comparison"]["top1_accuracy"]
        rep.add("Paired comparison", table(["top-1 accuracy difference (model - compare)", "permutation p"],
                                           [[fmt_interval(c["difference"]), c["p_value_permutation"]]]))
    atomic_write_text(ctx.out_dir / "report.html", rep.render())
    return {"task": "masked-lm", "records": len(texts), "top1_accuracy": main["top1_accuracy"]["value"],
            "headline": [f"top-1 {fmt_interval(main['top1_accuracy'])}  masked loss {fmt_interval(main['masked_loss'])}"]}
