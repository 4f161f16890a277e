"""Page: two runs or two artifacts side by side - figures, configs diff, curves overlaid."""

from __future__ import annotations

from typing import Any

from shoestring.core.errors import ShoestringError
from shoestring.core.runs import ordered_stages
from shoestring.ui import charts
from shoestring.ui.layout import Raw, esc, fmt_value, link, section, table
from shoestring.ui.store import ArtifactView, Store

__all__ = ["compare_body", "flatten", "resolve_side"]

FIGURES = ("read", "kept", "dropped", "quarantined", "fits", "peak_memory_bytes", "step_seconds", "total_seconds",
           "cost_usd", "steps", "train_loss_first", "train_loss_last", "val_loss", "best_val_loss", "tokens_per_second",
           "loss", "perplexity", "compare_loss", "loss_difference", "p_value", "verdict", "accuracy", "macro_f1",
           "size_ratio", "speedup", "kl_mean", "ppl_increase_pct", "gate_passed", "data_barrier", "compute_bottleneck")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (lists kept whole)."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolve_side(store: Store, ref: str) -> tuple[str, dict[str, ArtifactView]]:
    """``run:<ws>:<run_id>`` -> (label, stage id -> artifact); ``art:<ws>:<name>`` -> (label, {stage: artifact})."""
    kind, _, rest = ref.partition(":")
    ws_id, _, key = rest.partition(":")
    if kind == "run":
        ws = store.workspace(ws_id)
        run = ws.run(key)
        arts = {sid: a for sid, st in ordered_stages(run) if st.get("artifact")
                for a in [store.artifact_at(st["artifact"])] if a is not None}
        return f"{run.get('name', '')} {key}", arts
    if kind == "art":
        a = store.artifact(ws_id, key)
        return a.name, {a.stage: a}
    raise ShoestringError(f"compare: '{ref}' is not run:<workspace>:<run id> or art:<workspace>:<artifact>")


def _options(store: Store, selected: str) -> str:
    opts = []
    for ws in store.workspaces():
        for r in ws.runs():
            ref = f"run:{ws.id}:{r.get('run_id')}"
            opts.append((ref, f"run {r.get('run_id')} · {r.get('name', '')} · {ws.label} · {r.get('status')}"))
        for a in ws.artifacts():
            if a.kind in ("model", "evaluation", "dataset", "plan", "assessment"):
                opts.append((f"art:{ws.id}:{a.name}", f"{a.kind} {a.name} · {ws.label}"))
    return "".join(f'<option value="{esc(v)}"{" selected" if v == selected else ""}>{esc(t)}</option>' for v, t in opts)


def _figures(sa: dict[str, ArtifactView], sb: dict[str, ArtifactView]) -> list[list[Any]]:
    rows = []
    for sid in [s for s in sa if s in sb] or ([next(iter(sa))] if len(sa) == len(sb) == 1 else []):
        a, b = sa[sid], sb.get(sid) or next(iter(sb.values()))
        for k in FIGURES:
            va, vb = a.stats.get(k), b.stats.get(k)
            if va is None and vb is None:
                continue
            delta = f"{vb - va:+.4g}" if isinstance(va, int | float) and isinstance(vb, int | float) and not isinstance(
                va, bool) else ""
            rows.append([sid, k, fmt_value(va), fmt_value(vb), delta])
    return rows


def _config_diff(sa: dict[str, ArtifactView], sb: dict[str, ArtifactView]) -> list[list[Any]]:
    rows = []
    pairs = [(s, sa[s], sb[s]) for s in sa if s in sb]
    if not pairs and len(sa) == len(sb) == 1:
        pairs = [("", next(iter(sa.values())), next(iter(sb.values())))]
    for sid, a, b in pairs:
        fa, fb = flatten(a.config), flatten(b.config)
        for k in sorted(set(fa) | set(fb)):
            if fa.get(k) != fb.get(k):
                rows.append([sid or a.stage, k, fmt_value(fa.get(k)), fmt_value(fb.get(k))])
    return rows


def _curves(sa: dict[str, ArtifactView], sb: dict[str, ArtifactView]) -> Raw:
    series = []
    for tag, side, dashed, colour in (("A", sa, False, charts.PALETTE[0]), ("B", sb, True, charts.PALETTE[1])):
        for sid, a in side.items():
            rows = a.jsonl("metrics.jsonl") if a.stage == "train" else []
            pts = [(float(r["step"]), float(r["loss"])) for r in rows if "loss" in r]
            if pts:
                series.append(charts.Series(f"{tag} {sid}", pts, colour, dashed=dashed))
    if not series:
        return Raw('<p class="muted">no training curves on either side</p>')
    return Raw(charts.line_chart(series, title="train loss, overlaid", x_label="optimizer step", y_label="nats/token",
                                 width=1140, height=300, chart_id="compare-loss"))


def compare_body(store: Store, a_ref: str, b_ref: str) -> Raw:
    form = (f'<form method="get" class="compare-form"><label>A <select name="a">{_options(store, a_ref)}</select></label>'
            f'<label>B <select name="b">{_options(store, b_ref)}</select></label><button>compare</button></form>')
    if not a_ref or not b_ref:
        return Raw(form + '<p class="muted">Pick two runs, or two artifacts of the same kind.</p>')
    la, sa = resolve_side(store, a_ref)
    lb, sb = resolve_side(store, b_ref)
    stages = [[sid, link(sa[sid].url, sa[sid].name) if sid in sa else "-", link(sb[sid].url, sb[sid].name) if sid in sb
               else "-", "same artifact" if sid in sa and sid in sb and sa[sid].hash == sb[sid].hash else ""]
              for sid in dict.fromkeys([*sa, *sb])]
    return Raw("".join(esc(p) for p in [
        Raw(form),
        section("Artifacts", table(["stage", f"A: {la}", f"B: {lb}", ""], stages, tid="compare-stages")),
        section("Figures", table(["stage", "figure", "A", "B", "B - A"], _figures(sa, sb), tid="compare-figures",
                                 numeric=[2, 3, 4])),
        section("Curves", _curves(sa, sb), note=f"A = {la} (solid), B = {lb} (dashed)"),
        section("Config differences", table(["stage", "key", "A", "B"], _config_diff(sa, sb), tid="config-diff"),
                note="only keys whose values differ"),
    ]))
