"""Causal-LM / SFT evaluation: held-out loss and perplexity with bootstrap CIs, a paired
before/after comparison with a significance test, greedy and sampled generations, token
attributions, the HTML report and the drift reference."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.artifact import atomic_write_json, atomic_write_text
from shoestring.core.errors import ShoestringError
from shoestring.evaluate import lm
from shoestring.evaluate.config import model_spec
from shoestring.evaluate.drift import build_reference
from shoestring.evaluate.report import Report, fmt, fmt_interval, png_img, table
from shoestring.evaluate.stats import bootstrap_ci, paired_comparison, ratio_metric

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext
    from shoestring.evaluate.config import EvaluateConfig

__all__ = ["evaluate_causal_lm", "score_model"]


def _load(spec: str) -> tuple[Any, Any]:
    import torch

    from shoestring.models import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    model = load_model(spec, "causal-lm", dtype=torch.float32)
    if hasattr(model, "merge_and_unload"):
        # A LoRA adapter merged into the base weights gives the same outputs, faster.
        model = model.merge_and_unload()  # type: ignore[operator]
    model.eval()
    return model, tok


def score_model(
    spec: str, records: list[dict[str, Any]], cfg: EvaluateConfig, *, prompts: list[str]
) -> dict[str, Any]:
    """Load one model, score every record and generate on the prompts."""
    t0 = time.perf_counter()
    model, tok = _load(spec)
    load_s = time.perf_counter() - t0
    items: list[lm.TokenizedRecord] = []
    skipped = 0
    for rec in records:
        it = lm.tokenize_for_loss(tok, rec, cfg.max_seq_len, cfg.text_field)
        if it is None:
            skipped += 1
        else:
            items.append(it)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    t1 = time.perf_counter()
    losses = lm.record_losses(model, items, pad, cfg.token_budget) if items else None
    score_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    gens = lm.generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens)
    if cfg.sampled:
        gens += lm.generate(
            model, tok, prompts, max_new_tokens=cfg.max_new_tokens, sample=True,
            temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
        )
    gen_s = time.perf_counter() - t2
    explanations: list[dict[str, Any]] = []
    if cfg.explain and prompts:
        from shoestring.evaluate.explain import explain_next_token

        for p in prompts[: cfg.explain]:
            explanations.append(
                explain_next_token(
                    model, tok, lm.format_prompt(tok, p), steps=cfg.ig_steps,
                    max_steps=cfg.ig_max_steps, tolerance=cfg.ig_tolerance,
                ) | {"prompt": p}
            )
    probes = None
    if cfg.probe:
        from shoestring.evaluate.probes import probe_lm

        probes = probe_lm(model, tok, cfg)
    n_tok = int(losses.tokens.sum()) if losses is not None else 0
    return {
        "spec": spec,
        "losses": losses,
        "skipped": skipped,
        "generations": gens,
        "explanations": explanations,
        "probes": probes,
        "vocab": len(tok),
        "timings_s": {"load": round(load_s, 3), "score": round(score_s, 3), "generate": round(gen_s, 3)},
        "tokens_per_s": round(n_tok / score_s, 1) if score_s > 0 and n_tok else None,
    }


def _loss_block(res: dict[str, Any], cfg: EvaluateConfig) -> dict[str, Any]:
    losses: lm.LossResult | None = res["losses"]
    if losses is None:
        return {"records": 0}
    rows = np.stack([losses.nll_sum, losses.tokens.astype(np.float64)], axis=1)
    ci = bootstrap_ci(rows, ratio_metric, n_boot=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed)
    ppl = {k: (lm.perplexity(v) if k in ("value", "low", "high") else v) for k, v in ci.items()}
    return {
        "records": len(losses.ids),
        "scored_tokens": int(losses.tokens.sum()),
        "loss": ci,
        "perplexity": ppl,
    }


def evaluate_causal_lm(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:

    spec = model_spec("model", cfg, ctx)
    other = model_spec("compare", cfg, ctx)
    assert spec is not None  # required field
    records: list[dict[str, Any]] = []
    bad: dict[str, int] = {}
    if "dataset" in ctx.inputs:
        records, bad_counter = lm.read_records(ctx.inputs["dataset"].path / f"{cfg.split}.jsonl", cfg.max_records)
        bad = dict(bad_counter)
    if not records and not cfg.prompts:
        raise ShoestringError(
            "evaluate: nothing to evaluate; pass --dataset with a non-empty split, or --prompts for generations"
        )
    ctx.console.print(f"  scoring {len(records)} records with {spec}")
    main = score_model(spec, records, cfg, prompts=cfg.prompts)
    base = None
    if other is not None:
        ctx.console.print(f"  scoring {len(records)} records with {other} (comparison)")
        base = score_model(other, records, cfg, prompts=cfg.prompts)

    metrics: dict[str, Any] = {
        "task": "causal-lm",
        "split": cfg.split,
        "records_read": len(records),
        "records_malformed": bad,
        "model": {"spec": spec, **_loss_block(main, cfg), "skipped": main["skipped"],
                  "timings_s": main["timings_s"], "tokens_per_s": main["tokens_per_s"]},
    }
    if base is not None:
        metrics["compare"] = {"spec": other, **_loss_block(base, cfg), "skipped": base["skipped"],
                              "timings_s": base["timings_s"], "tokens_per_s": base["tokens_per_s"]}
        metrics["comparison"] = _compare(main, base, cfg)
    metrics["generations"] = _pair_generations(main, base)
    metrics["explanations"] = {"model": main["explanations"], **({"compare": base["explanations"]} if base else {})}
    if main["probes"] is not None:
        metrics["probes"] = {"model": main["probes"], **({"compare": base["probes"]} if base else {})}

    reference = _reference(main)
    atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    atomic_write_json(ctx.out_dir / "reference.json", reference)
    atomic_write_text(
        ctx.out_dir / "generations.jsonl",
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in metrics["generations"]),
    )
    atomic_write_text(ctx.out_dir / "report.html", _render(metrics, main, base, cfg))
    return _stats(metrics)


def _compare(main: dict[str, Any], base: dict[str, Any], cfg: EvaluateConfig) -> dict[str, Any]:
    a: lm.LossResult | None = main["losses"]
    b: lm.LossResult | None = base["losses"]
    if a is None or b is None:
        return {"note": "no scored records in common"}
    b_by_id = {rid: i for i, rid in enumerate(b.ids)}
    pairs = [(i, b_by_id[rid]) for i, rid in enumerate(a.ids) if rid in b_by_id]
    if not pairs:
        return {"note": "no scored records in common"}
    ia = np.array([p[0] for p in pairs])
    ib = np.array([p[1] for p in pairs])
    same_tok = bool(np.array_equal(a.tokens[ia], b.tokens[ib]))
    # Weight each record by its scored tokens so the difference is in corpus loss (nats/token).
    result = paired_comparison(
        a.per_record_loss[ia], b.per_record_loss[ib], weights=a.tokens[ia],
        n_boot=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed,
    )
    diff = result["difference"]
    alpha = 1 - cfg.confidence
    result.update(
        metric="loss (nats/token), model minus compare",
        same_tokenization=same_tok,
        significant=bool(result["p_value_permutation"] < alpha and (diff["high"] < 0 or diff["low"] > 0)),
        verdict=(
            "model is better" if diff["high"] < 0 else "compare is better" if diff["low"] > 0 else "no clear difference"
        ),
    )
    return result


def _pair_generations(main: dict[str, Any], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for i, g in enumerate(main["generations"]):
        row = {"prompt": g["prompt"], "mode": g["mode"], "model": g["completion"], "model_new_tokens": g["new_tokens"]}
        if base is not None:
            bg = base["generations"][i]
            row.update(compare=bg["completion"], compare_new_tokens=bg["new_tokens"])
        out.append(row)
    return out


def _reference(main: dict[str, Any]) -> dict[str, Any]:
    """Distributions a server can observe per request: prompt tokens and characters in,
    reply tokens out (the held-out replies stand in for generations), plus per-record loss."""
    losses: lm.LossResult | None = main["losses"]
    feats: dict[str, list[float]] = {}
    preds: dict[str, list[float]] = {}
    if losses is not None:
        feats["input_tokens"] = [float(x) for x in losses.prompt_tokens]
        feats["input_chars"] = [float(x) for x in losses.prompt_chars]
        replies = [float(x) for x in losses.reply_tokens if x is not None]
        if replies:
            preds["output_tokens"] = replies
        preds["loss"] = [float(x) for x in losses.per_record_loss]
    else:
        gens = [g for g in main["generations"] if g["mode"] == "greedy"]
        preds["output_tokens"] = [float(g["new_tokens"]) for g in gens]
    return build_reference(feats, preds)


def _stats(metrics: dict[str, Any]) -> dict[str, Any]:
    m = metrics["model"]
    headline = []
    stats: dict[str, Any] = {"task": "causal-lm", "records": m.get("records", 0)}
    if "loss" in m:
        stats.update(loss=m["loss"]["value"], perplexity=m["perplexity"]["value"])
        headline.append(f"model   loss {fmt_interval(m['loss'])}  ppl {fmt_interval(m['perplexity'])}")
    c = metrics.get("compare")
    if c and "loss" in c:
        stats.update(compare_loss=c["loss"]["value"], compare_perplexity=c["perplexity"]["value"])
        headline.append(f"compare loss {fmt_interval(c['loss'])}  ppl {fmt_interval(c['perplexity'])}")
    comp = metrics.get("comparison")
    if comp and "difference" in comp:
        stats.update(
            loss_difference=comp["difference"]["value"], p_value=comp["p_value_permutation"], verdict=comp["verdict"]
        )
        headline.append(
            f"difference {fmt_interval(comp['difference'])} nats/token, p={fmt(comp['p_value_permutation'], 3)}: "
            f"{comp['verdict']}"
        )
    stats["headline"] = headline
    return stats


def _render(metrics: dict[str, Any], main: dict[str, Any], base: dict[str, Any] | None, cfg: EvaluateConfig) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shoestring.evaluate.explain import render_explanations

    conf = f"{cfg.confidence:.0%}"
    rep = Report(
        f"Evaluation: {metrics['model']['spec']}",
        f"causal-lm, split '{cfg.split}', {metrics['records_read']} records read; intervals are {conf} "
        f"percentile bootstrap over records ({cfg.bootstrap} resamples).",
    )
    rows = []
    for key in ("model", "compare"):
        m = metrics.get(key)
        if not m or "loss" not in m:
            continue
        rows.append([key, m["spec"], m["records"], m["scored_tokens"], fmt_interval(m["loss"]),
                     fmt_interval(m["perplexity"]), m["tokens_per_s"]])
    rep.add("Held-out loss and perplexity", table(
        ["role", "model", "records", "scored tokens", f"loss nats/token [{conf} CI]", f"perplexity [{conf} CI]",
         "scoring tokens/s"], rows) + '<p class="note">Loss on assistant tokens only for chat records '
        "(chat template applied), on all tokens for plain text; token-weighted mean.</p>")
    comp = metrics.get("comparison")
    if comp and "difference" in comp:
        cls = "good" if comp["verdict"] == "model is better" else "bad" if comp["verdict"] == "compare is better" else ""
        body = table(
            ["difference (model - compare)", "permutation p", "Wilcoxon p", "records", "model better", "compare better",
             "same tokenization"],
            [[fmt_interval(comp["difference"]), comp["p_value_permutation"], comp["p_value_wilcoxon"], comp["n"],
              comp["a_better"], comp["b_better"], str(comp["same_tokenization"])]],
        ) + f'<p class="{cls}">Verdict: {comp["verdict"]}.</p>'
        a, b = main["losses"], base["losses"] if base else None
        if a is not None and b is not None:
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
            hi = float(max(a.per_record_loss.max(), b.per_record_loss.max()))
            bins = np.linspace(0, hi * 1.02 + 1e-9, 30)
            axes[0].hist(b.per_record_loss, bins=bins, alpha=0.6, label="compare")
            axes[0].hist(a.per_record_loss, bins=bins, alpha=0.6, label="model")
            axes[0].set_xlabel("per-record loss (nats/token)")
            axes[0].set_ylabel("records")
            axes[0].legend()
            bmap = dict(zip(b.ids, b.per_record_loss, strict=True))
            xs = [bmap[r] for r in a.ids if r in bmap]
            ys = [v for r, v in zip(a.ids, a.per_record_loss, strict=True) if r in bmap]
            axes[1].scatter(xs, ys, s=10, alpha=0.6)
            axes[1].plot([0, hi], [0, hi], color="grey", lw=1)
            axes[1].set_xlabel("compare loss")
            axes[1].set_ylabel("model loss")
            axes[1].set_title("points below the line: model better")
            body += png_img(fig, "per-record loss, model vs compare")
        rep.add("Paired comparison", body)
    elif main["losses"] is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(main["losses"].per_record_loss, bins=30)
        ax.set_xlabel("per-record loss (nats/token)")
        ax.set_ylabel("records")
        rep.add("Loss distribution", png_img(fig, "per-record loss histogram"))
    if metrics["generations"]:
        heads = ["prompt", "mode", "model"] + (["compare"] if base else [])
        grows = [[f"<pre>{_esc(g['prompt'])}</pre>", g["mode"], f"<pre>{_esc(g['model'])}</pre>"]
                 + ([f"<pre>{_esc(g['compare'])}</pre>"] if base else []) for g in metrics["generations"]]
        rep.add("Generations on fixed prompts", table(heads, grows, raw=True) +
                f'<p class="note">Greedy, and sampled with temperature {cfg.temperature}, top-p {cfg.top_p}, '
                f"seed {cfg.seed}; at most {cfg.max_new_tokens} new tokens.</p>")
    ex = metrics["explanations"]
    if ex.get("model"):
        rep.add("Explanations (Integrated Gradients)", render_explanations(ex))
    if "probes" in metrics:
        from shoestring.evaluate.probes import render_probes

        rep.add("Counterfactual probes", "".join(render_probes(p, role) for role, p in metrics["probes"].items()))
    rep.add("Drift reference", "<p>reference.json stores, for drift detection by the server, the distributions of "
            "prompt tokens and characters (input_tokens, input_chars), reply tokens (output_tokens) and per-record "
            "loss of the evaluation records.</p>")
    return rep.render()


def _esc(s: str) -> str:
    import html

    return html.escape(s)
