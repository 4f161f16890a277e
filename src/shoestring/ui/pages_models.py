"""Pages: a trained model, an evaluation, a compressed model (gates) and an export (checks)."""

from __future__ import annotations

from typing import Any

from shoestring.ui.layout import Raw, cards, esc, fmt_bytes, fmt_seconds, fmt_value, link, section, table
from shoestring.ui.live import Progress, planned_for
from shoestring.ui.pages_runs import headline, train_panel
from shoestring.ui.store import ArtifactView, Store

__all__ = ["GATE_KEYS", "compress_body", "evaluation_body", "export_body", "interval", "model_body"]

GATE_KEYS = {
    "max_ppl_increase_pct": ("ppl_increase_pct", "max"), "max_kl": ("kl_mean", "max"),
    "max_size_ratio": ("size_ratio", "max"), "min_speedup": ("speedup", "min"),
    "min_tokens_per_s_ratio": ("tokens_per_s_ratio", "min"), "min_cosine": ("cosine_to_parent", "min"),
    "min_agreement": ("agreement", "min"),
}
"""Gate threshold -> (report key, direction), as the compress stage's gate reads them."""


def _is_interval(v: Any) -> bool:
    return isinstance(v, dict) and "value" in v and "low" in v and "high" in v


def interval(v: Any) -> str:
    """``0.412 [0.398, 0.427]`` for a metric with a confidence interval."""
    if _is_interval(v):
        return f"{v['value']:.4g} [{v['low']:.4g}, {v['high']:.4g}]"
    return fmt_value(v)


def _metric_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    roles = [r for r in ("model", "compare") if isinstance(metrics.get(r), dict)]
    names: list[str] = []
    for r in roles:
        names += [k for k, v in metrics[r].items() if (_is_interval(v) or isinstance(v, int | float)) and k not in names]
    rows = [[n, *[interval(metrics[r].get(n)) if n in metrics[r] else "-" for r in roles]] for n in names]
    heads = [f"{r}: {metrics[r].get('spec', '')}" for r in roles]
    return heads, rows


def _flatten(d: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    rows: list[list[Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and not _is_interval(v):
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append([f"{prefix}{k}", interval(v)])
    return rows


def _fairness(fair: dict[str, Any]) -> Raw:
    out = []
    for name, f in fair.items():
        groups = f.get("groups") or {}
        cols = [k for k in ("selection_rate", "tpr", "fpr", "accuracy", "count") if k in (f.get("overall") or {})]
        cols = cols or sorted({k for g in groups.values() for k in g})
        out.append(f"<h3>by {esc(name)}</h3>")
        out.append(table(["group", *cols], [[g, *[fmt_value(v.get(k)) for k in cols]] for g, v in groups.items()],
                         cls="fairness"))
        summary = [[k.replace("_", " "), fmt_value(f[k])] for k in (
            "demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
            "equalized_odds_ratio") if k in f]
        if f.get("difference"):
            summary += [[f"difference (max - min) {k}", fmt_value(v)] for k, v in f["difference"].items()]
        if summary:
            out.append(table(["summary", "value"], summary))
        mit = f.get("mitigation")
        if mit:
            out.append("<h4>Mitigation (before / after)</h4>" + table(
                ["method", "accuracy", "demographic parity difference", "equalised odds difference"],
                [[r.get("method"), fmt_value(r.get("accuracy")), fmt_value(r.get("demographic_parity_difference")),
                  fmt_value(r.get("equalized_odds_difference"))] for r in mit.get("rows", [])]))
    return Raw("".join(out))


def _explanations(ex: Any) -> Raw:
    rows = []
    for role, items in (ex or {}).items():
        for e in items if isinstance(items, list) else []:
            if not isinstance(e, dict):
                continue
            text = str(e.get("text") or e.get("prompt") or e.get("record") or "")[:120]
            check = e.get("relative_gap", e.get("local_r2", e.get("gap")))
            met = e.get("met", e.get("converged", e.get("within_tolerance")))
            rows.append([role, text, e.get("method", ""), fmt_value(check), fmt_value(met)])
    if not rows:
        return Raw('<p class="muted">no explanations in this evaluation (explain: 0)</p>')
    return table(["model", "input", "method", "completeness check (relative gap / R²)", "met"], rows, tid="explanations")


def evaluation_body(a: ArtifactView) -> Raw:
    m = a.json_file("metrics.json") or {}
    heads, rows = _metric_rows(m)
    parts: list[Any] = [section("Metrics with confidence intervals", table(["metric", *heads], rows, tid="eval-metrics"),
                                note=f"{m.get('task', a.config.get('task', ''))}; [low, high] = bootstrap interval")]
    comp = m.get("comparison")
    if isinstance(comp, dict):
        verdict = comp.get("verdict", "")
        parts.append(section("Before / after (paired)", Raw(f'<p class="verdict">{esc(verdict)}</p>') if verdict else "",
                             table(["figure", "value"], _flatten(comp), tid="comparison")))
    if m.get("fairness"):
        parts.append(section("Fairness", _fairness(m["fairness"])))
    parts.append(section("Explanations", _explanations(m.get("explanations"))))
    gens = m.get("generations") or []
    if gens:
        parts.append(section("Generations", table(["prompt", "decoding", "model", "compare"], [
            [g.get("prompt"), g.get("mode", ""), Raw(f'<pre class="text">{esc(g.get("model", ""))}</pre>'),
             Raw(f'<pre class="text">{esc(g.get("compare", ""))}</pre>')] for g in gens[:10]], tid="generations")))
    if (a.path / "report.html").is_file():
        parts.append(section("Full report", Raw(
            f'<p>{link(f"{a.url}/file/report.html", "open report.html")}</p>'
            f'<iframe class="report" sandbox src="{esc(a.url)}/file/report.html" title="evaluation report"></iframe>')))
    return Raw("".join(esc(p) for p in parts))


def compress_body(a: ArtifactView) -> Raw:
    rep = a.json_file("compression_report.json") or {}
    gate = rep.get("gate") or {}
    rows = []
    for label, pk, ck, mult in (("weights (MB)", "parent_weight_bytes", "child_weight_bytes", 1e-6),
                                ("forward latency (ms)", "parent_latency_s", "child_latency_s", 1e3),
                                ("generation (tokens/s)", "parent_tokens_per_s", "child_tokens_per_s", 1.0),
                                ("perplexity", "parent_ppl", "child_ppl", 1.0)):
        if rep.get(pk) is not None and rep.get(ck) is not None:
            rows.append([label, f"{rep[pk] * mult:.4g}", f"{rep[ck] * mult:.4g}"])
    checks = []
    for key, (metric, direction) in GATE_KEYS.items():
        limit, value = gate.get(key), rep.get(metric)
        if limit is None:
            continue
        ok = value is None or (value <= limit if direction == "max" else value >= limit)
        checks.append([metric, f"{'<=' if direction == 'max' else '>='} {limit:g}", fmt_value(value),
                       Raw(f'<span class="{"ok" if ok else "rejected"}">{"pass" if ok else "fail"}</span>')])
    passed = gate.get("passed", True)
    return Raw("".join(esc(p) for p in [
        cards([("gate", "PASS" if passed else "FAIL", gate.get("action", "")), ("method", rep.get("method", ""), ""),
               ("size ratio", fmt_value(rep.get("size_ratio")), "compressed / parent weights"),
               ("speed-up", fmt_value(rep.get("speedup")), "parent latency / compressed")]),
        section("Compressed vs parent", table(["metric", "parent", "compressed"], rows, tid="compress-pair",
                                              numeric=[1, 2])),
        section("Gate", table(["metric", "threshold", "measured", "verdict"], checks, tid="gate"),
                Raw(f'<p class="err">{esc("; ".join(gate.get("failures") or []))}</p>' if gate.get("failures") else "")),
        section("All figures", table(["figure", "value"], [[k, fmt_value(v)] for k, v in rep.items()
                                                           if not isinstance(v, dict | list)])),
    ]))


def export_body(a: ArtifactView) -> Raw:
    rep = a.json_file("export_report.json") or {}
    rows = []
    for fmt in ("hf", "onnx", "gguf"):
        info = rep.get(fmt)
        if not isinstance(info, dict):
            continue
        check = info.get("check") or {k: v for k, v in info.items() if "diff" in k or "identical" in k}
        rows.append([fmt, info.get("path", "model/"), fmt_bytes(info.get("bytes")),
                     "; ".join(f"{k} {fmt_value(v)}" for k, v in check.items()) or "unchecked"])
    return Raw(section("Exports and their checks", table(["format", "path", "size", "check"], rows, tid="exports")))


def model_body(store: Store, a: ArtifactView) -> Raw:
    s = a.stats
    prog = Progress("train", "done", rows=a.jsonl("metrics.jsonl"), total_steps=s.get("steps"),
                    planned=planned_for(store, a),
                    measured={k: s[k] for k in ("step_seconds", "tokens_per_second", "peak_memory_bytes") if s.get(k)},
                    artifact=a)
    head = cards([
        ("task", s.get("task", a.manifest.get("task", "")), f"{s.get('method', '')} on {s.get('model', '')}"),
        ("steps", s.get("steps", "-"), f"stopped by {s.get('stopped_by', '-')}"),
        ("loss", f"{s['train_loss_first']:.3f} -> {s['train_loss_last']:.3f}" if s.get("train_loss_first") else "-",
         f"validation {s['val_loss']:.3f}" if s.get("val_loss") else ""),
        ("peak memory", fmt_bytes(s.get("peak_memory_bytes")), f"planned {fmt_bytes(s.get('predicted_peak_memory_bytes'))}"),
    ])
    parts: list[Any] = [head]
    if prog.rows:
        parts.append(section("Training", train_panel(prog)))
    if s.get("deviations"):
        parts.append(section("Settings that differ from the plan", table(["deviation"], [[d] for d in s["deviations"]])))
    downstream = store.consumers(a)
    for title, stage in (("Evaluations", "evaluate"), ("Compressed models", "compress"), ("Exports", "export")):
        found = [c for c in downstream if c.stage == stage]
        if found:
            parts.append(section(title, table(["artifact", "stage", "started", "headline"], [
                [link(c.url, c.name), c.stage, c.started[:19], headline(c)] for c in found])))
    settings = a.json_file("train_settings.json")
    if isinstance(settings, dict):
        parts.append(section("Resolved settings", table(["setting", "value"], [[k, fmt_value(v)] for k, v in settings.items()])))
    privacy = a.manifest.get("privacy")
    if privacy:
        parts.append(section("Privacy (DP-SGD)", table(["figure", "value"], [[k, fmt_value(v)] for k, v in privacy.items()])))
    parts.append(Raw(f'<p class="muted">trained in {esc(fmt_seconds((a.manifest.get("timings") or {}).get("seconds")))}; '
                     f'base model {esc(a.manifest.get("base_model", "-"))}</p>'))
    return Raw("".join(esc(p) for p in parts))
