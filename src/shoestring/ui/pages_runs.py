"""Pages: overview, a workspace, a run (stages, live training, lineage), launches."""

from __future__ import annotations

from typing import Any

from shoestring.core.runs import ordered_stages
from shoestring.ui import charts
from shoestring.ui.layout import (
    Raw,
    badge,
    cards,
    esc,
    fmt_bytes,
    fmt_seconds,
    fmt_time,
    link,
    section,
    table,
)
from shoestring.ui.live import Progress, run_progress
from shoestring.ui.store import ArtifactView, Store, WorkspaceView, lineage_graph

__all__ = ["lineage_svg", "overview_body", "run_body", "run_panel", "train_panel", "workspace_body"]


def _duration(run: dict[str, Any]) -> float | None:
    from datetime import datetime, timezone

    try:
        start = datetime.fromisoformat(str(run.get("started")))
        end = datetime.fromisoformat(str(run["finished"])) if run.get("finished") else datetime.now(timezone.utc)
    except (ValueError, TypeError):
        return None
    return (end - start).total_seconds()


def _stage_counts(run: dict[str, Any]) -> str:
    st = [s.get("status") for s in run.get("stages", {}).values()]
    done = sum(s in ("done", "cached") for s in st)
    return f"{done}/{len(st)}"


def run_url(ws: WorkspaceView, run: dict[str, Any]) -> str:
    return f"/ws/{ws.id}/runs/{run.get('run_id')}"


def runs_table(rows: list[tuple[WorkspaceView, dict[str, Any]]], *, show_ws: bool = True) -> Raw:
    body = []
    for ws, r in rows:
        cells: list[Any] = [link(run_url(ws, r), r.get("name") or r.get("run_id", "run"))]
        if show_ws:
            cells.append(link(f"/ws/{ws.id}", ws.label))
        cells += [badge(str(r.get("status", "?"))), fmt_time(r.get("started")), fmt_seconds(_duration(r)),
                  _stage_counts(r), " ".join(r.get("overrides") or []) or "-",
                  Raw(f'<span class="err">{esc(r.get("error") or "")}</span>')]
        body.append(cells)
    head = ["run", *(["workspace"] if show_ws else []), "status", "started", "took", "stages", "overrides", "error"]
    return table(head, body, cls="runs", tid="runs")


def overview_body(store: Store, launches: list[Any]) -> Raw:
    wss = store.workspaces()
    runs = [(ws, r) for ws in wss for r in ws.runs()]
    runs.sort(key=lambda wr: str(wr[1].get("started", "")), reverse=True)
    running = sum(r.get("status") == "running" for _, r in runs)
    failed = sum(r.get("status") == "failed" for _, r in runs)
    ws_rows = []
    for ws in wss:
        latest = ws.runs()[:1]
        arts = ws.artifacts()
        ws_rows.append([link(f"/ws/{ws.id}", ws.label), len(arts),
                        latest[0].get("name", "") if latest else "-",
                        badge(str(latest[0].get("status"))) if latest else "-",
                        fmt_time(latest[0].get("started")) if latest else "-"])
    parts = [
        cards([("workspaces", len(wss), ", ".join(str(r) for r in store.roots)), ("runs", len(runs), "recorded"),
               ("running", running, "now"), ("failed", failed, "runs with a failed stage")]),
        section("Workspaces", table(["workspace", "artifacts", "last recipe", "status", "started"], ws_rows,
                                    tid="workspaces", numeric=[1])),
        section("Runs", runs_table(runs[:30])),
    ]
    if launches:
        parts.append(section("Launched from this dashboard", table(
            ["launch", "recipe", "overrides", "status", "started"],
            [[link(f"/launches/{la.id}", la.id), la.extra.get("name", la.recipe), " ".join(la.overrides) or "-",
              badge(la.status), fmt_time(la.started)] for la in launches[:15]], tid="launches")))
    if not wss:
        parts.insert(0, Raw('<p class="empty">No workspaces yet. Run a recipe (<code>shoestring run '
                            'recipes/quickstart.yaml</code>) or <a href="/launch">launch one here</a>.</p>'))
    return Raw("".join(parts))


def artifacts_table(arts: list[ArtifactView]) -> Raw:
    return table(["artifact", "kind", "stage", "started", "took", "headline"], [
        [link(a.url, a.name), a.kind, a.stage, fmt_time(a.started),
         fmt_seconds((a.manifest.get("timings") or {}).get("seconds")), headline(a)] for a in arts
    ], tid="artifacts")


def headline(a: ArtifactView) -> str:
    """One line of the figures that matter most for this kind of artifact."""
    s = a.stats
    if a.kind == "dataset" and "read" in s:
        return f"read {s['read']:,} = kept {s['kept']:,} + dropped {s['dropped']:,} + quarantined {s['quarantined']:,}"
    if a.kind == "plan" and "peak_memory_bytes" in s:
        return (f"{'fits' if s.get('fits') else 'does not fit'}; peak {fmt_bytes(s['peak_memory_bytes'])}, "
                f"{fmt_seconds(s.get('total_seconds'))}, ${s.get('cost_usd', 0):.4g}")
    if a.kind == "model" and "train_loss_last" in s:
        return (f"{s.get('steps')} steps, loss {s.get('train_loss_first', 0):.3f} -> {s.get('train_loss_last', 0):.3f}, "
                f"{s.get('tokens_per_second') or 0:,.0f} tok/s")
    if a.kind == "evaluation" and "loss" in s:
        return f"loss {s['loss']:.3f}" + (f" vs {s['compare_loss']:.3f}" if s.get("compare_loss") else "") + (
            f"; {s['verdict']}" if s.get("verdict") else "")
    if "gate_passed" in s:
        return f"{s.get('method', '')}: gate {'passed' if s.get('gate_passed') else 'failed'}"
    if a.kind == "assessment":
        parts = [f"{k.replace('_', ' ')} {s[k]:.2f}" for k in ("data_barrier", "compute_bottleneck")
                 if isinstance(s.get(k), int | float)]
        return "; ".join(parts)
    keys = [k for k, v in s.items() if isinstance(v, int | float) and not isinstance(v, bool)][:3]
    return ", ".join(f"{k} {s[k]:.4g}" for k in keys)


def lineage_svg(store: Store, arts: list[ArtifactView], status: dict[str, str] | None = None,
                titles: dict[str, str] | None = None) -> Raw:
    nodes, edges = lineage_graph(store, arts)
    status, titles = status or {}, titles or {}
    return Raw(charts.dag([
        charts.Node(a.hash, titles.get(a.hash, a.stage), f"{a.kind} · {a.hash[:8]}", a.url,
                    charts.KIND_COLOURS.get(a.kind, "#6b7480"), status.get(a.hash, "")) for a in nodes
    ], edges))


def workspace_body(store: Store, ws: WorkspaceView) -> Raw:
    runs = ws.runs()
    arts = ws.artifacts()
    links = {v: k for k, v in ws.links().items()}
    titles = {a.hash: links.get(a.name, a.stage) for a in arts}
    return Raw("".join([
        cards([("runs", len(runs), ""), ("artifacts", len(arts), str(ws.root))]),
        section("Runs", runs_table([(ws, r) for r in runs], show_ws=False)),
        section("Lineage", Raw('<div class="scroll">'), lineage_svg(store, arts, titles=titles), Raw("</div>"),
                note="every artifact of this workspace and the inputs it came from; click a box to open it"),
        section("Artifacts", artifacts_table(arts)),
    ]))


def stages_table(ws: WorkspaceView, run: dict[str, Any], store: Store) -> Raw:
    rows = []
    for sid, st in ordered_stages(run):
        art = store.artifact_at(st["artifact"]) if st.get("artifact") else None
        err = st.get("error") or ""
        took = "-" if st.get("cached") or st.get("seconds") is None else fmt_seconds(st.get("seconds"))
        rows.append([sid, st.get("stage", ""), badge(str(st.get("status", "?"))), took,
                     link(art.url, art.name) if art else "-",
                     Raw(f'<span class="stage-error" data-stage="{esc(sid)}">{esc(err)}</span>') if err else ""])
    return table(["stage id", "stage", "status", "took", "artifact", "error"], rows, cls="stages", tid="stages")


def train_panel(p: Progress) -> Raw:
    """Curves (loss, step time, tokens/s), ETA, and planned vs measured side by side."""
    rows = p.rows
    loss = [(float(r["step"]), float(r["loss"])) for r in rows if "loss" in r]
    val = [(float(r["step"]), float(r["val_loss"])) for r in rows if "val_loss" in r]
    tps = [(float(r["step"]), float(r["tokens_per_second"])) for r in rows if "tokens_per_second" in r]
    step_s = [(float(r["step"]), float(r["step_seconds"])) for r in rows if "step_seconds" in r]
    pl, me = p.planned, p.measured
    loss_chart = charts.line_chart(
        [charts.Series("train loss", loss), charts.Series("validation loss", val, charts.PALETTE[1], markers=True)],
        title="loss", x_label="optimizer step", y_label="nats/token", width=1140, height=260, chart_id=f"loss-{p.stage_id}")
    ref_t = [(float(pl["tokens_per_second"]), "planned", "#7a5cc2")] if pl.get("tokens_per_second") else []
    tps_chart = charts.line_chart([charts.Series("tokens/s", tps, charts.PALETTE[2])], title="throughput",
                                  x_label="optimizer step", y_label="tokens/s", hlines=ref_t, width=560,
                                  chart_id=f"tps-{p.stage_id}")
    ref_s = [(float(pl["step_seconds"]), "planned", "#7a5cc2")] if pl.get("step_seconds") else []
    step_chart = charts.line_chart([charts.Series("step time", step_s, charts.PALETTE[3])], title="step time",
                                   x_label="optimizer step", y_label="seconds", hlines=ref_s, width=560,
                                   chart_id=f"step-{p.stage_id}")
    total = p.total_steps
    head = cards([
        ("step", f"{p.step:,}" + (f" / {total:,}" if total else ""), p.status),
        ("ETA", fmt_seconds(p.eta_seconds) if p.status == "running" else "-", p.eta_note if p.status == "running" else ""),
        ("tokens/s", f"{me.get('tokens_per_second', 0):,.0f}" if me.get("tokens_per_second") else "-",
         f"planned {pl['tokens_per_second']:,.0f}" if pl.get("tokens_per_second") else ""),
        ("step time", fmt_seconds(me.get("step_seconds")), f"planned {fmt_seconds(pl.get('step_seconds'))}"),
    ])

    def ratio(m: Any, q: Any) -> str:
        return f"{m / q:.2f}x" if isinstance(m, int | float) and isinstance(q, int | float) and q else "-"

    compare = table(["", "planned", "measured", "measured / planned"], [
        ["peak memory", fmt_bytes(pl.get("peak_memory_bytes")), fmt_bytes(me.get("peak_memory_bytes")),
         ratio(me.get("peak_memory_bytes"), pl.get("peak_memory_bytes"))],
        ["step time", fmt_seconds(pl.get("step_seconds")), fmt_seconds(me.get("step_seconds")),
         ratio(me.get("step_seconds"), pl.get("step_seconds"))],
        ["tokens/s", f"{pl['tokens_per_second']:,.0f}" if pl.get("tokens_per_second") else "-",
         f"{me['tokens_per_second']:,.0f}" if me.get("tokens_per_second") else "-",
         ratio(me.get("tokens_per_second"), pl.get("tokens_per_second"))],
    ], cls="compare", tid=f"plan-vs-measured-{p.stage_id}", numeric=[1, 2, 3])
    notes = [] if me.get("peak_memory_bytes") else ["peak memory is measured when the stage finishes"]
    if pl.get("calibrated") is False and pl.get("device_kind") == "cpu":
        notes.append("the plan's CPU was not calibrated, so its step time is a rough estimate "
                     "(shoestring plan --calibrate measures this machine)")
    note = "; ".join(notes)
    return Raw(f'<div class="train-panel" data-stage="{esc(p.stage_id)}" data-rows="{len(rows)}">{head}'
               f'<div class="chart-row">{loss_chart}</div><div class="chart-row">{tps_chart}{step_chart}</div>'
               f'<h3>Planned vs measured</h3>{compare}<p class="muted">{esc(note)}</p></div>')


def run_panel(store: Store, ws: WorkspaceView, run: dict[str, Any]) -> Raw:
    """The live part of a run page (re-fetched by app.js while the run is going)."""
    parts: list[Any] = [Raw(f'<div class="run-status" data-status="{esc(run.get("status"))}">'), badge(str(run.get("status"))),
                        Raw(f' <span class="muted">{esc(_stage_counts(run))} stages finished, '
                            f'{esc(fmt_seconds(_duration(run)))}</span></div>')]
    if run.get("error"):
        parts.append(Raw(f'<p class="run-error">{esc(run["error"])}</p>'))
    parts.append(stages_table(ws, run, store))
    for prog in run_progress(store, ws, run):
        if prog.rows or prog.status == "running":
            parts.append(section(f"Training: {prog.stage_id}", train_panel(prog), sid=f"train-{prog.stage_id}"))
    arts = [a for st in run.get("stages", {}).values() if st.get("artifact")
            for a in [store.artifact_at(st["artifact"])] if a is not None]
    status = {a.hash: str(st.get("status")) for st in run.get("stages", {}).values() if st.get("artifact")
              for a in [store.artifact_at(st["artifact"])] if a is not None}
    titles = {a.hash: sid for sid, st in run.get("stages", {}).items() if st.get("artifact")
              for a in [store.artifact_at(st["artifact"])] if a is not None}
    if arts:
        parts.append(section("Lineage", Raw('<div class="scroll">'), lineage_svg(store, arts, status, titles), Raw("</div>"),
                             note="this run's artifacts and their inputs; the ring is the stage's status in this run"))
    return Raw("".join(esc(p) for p in parts))


def run_body(store: Store, ws: WorkspaceView, run: dict[str, Any], csrf: str, log_html: str = "") -> Raw:
    info = table(["recipe", "workspace", "overrides", "forced", "started", "process"], [[
        run.get("recipe", ""), ws.label, " ".join(run.get("overrides") or []) or "-",
        ", ".join(run.get("force") or []) or "-", fmt_time(run.get("started")), run.get("pid", "")]], cls="meta")
    cancel = ""
    if run.get("status") == "running":
        cancel = (f'<form method="post" action="/ws/{esc(ws.id)}/runs/{esc(run.get("run_id"))}/cancel" class="inline">'
                  f'<input type="hidden" name="csrf" value="{esc(csrf)}"><button class="danger" id="cancel">Cancel run'
                  "</button></form>")
    return Raw(f'{info}{cancel}<div id="run-panel">{run_panel(store, ws, run)}</div>{log_html}')
