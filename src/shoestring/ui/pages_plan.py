"""Pages: a plan (chosen config, memory by term, candidates with rejections, cost per GPU type)."""

from __future__ import annotations

from typing import Any

from shoestring.ui import charts
from shoestring.ui.layout import Raw, cards, esc, fmt_bytes, fmt_seconds, fmt_value, link, section, table
from shoestring.ui.store import ArtifactView, Store

__all__ = ["gpu_cost_table", "plan_body"]


def _verdict(c: dict[str, Any]) -> Raw:
    if c.get("fits"):
        return Raw('<span class="ok">fits</span>')
    return Raw(f'<span class="rejected">{esc(c.get("reason") or "rejected")}</span>')


def gpu_cost_table(rows: list[dict[str, Any]]) -> Raw:
    """What-if plans (from an assessment): device, method, fits, memory, time, cost."""
    body = []
    for r in sorted(rows, key=lambda r: (not r["fits"], r["usd"])):
        change = ", ".join(f"{k} {v}" for k, v in (r.get("change") or {}).items()) or "as planned"
        body.append([r["device"], r["method"], r["precision"], change, _verdict(r),
                     f"{fmt_bytes(r['peak_memory_bytes'])} / {fmt_bytes(r['usable_bytes'])}",
                     f"{r['micro_batch_size']} x {r['grad_accum']}", fmt_seconds(r["hours"] * 3600),
                     f"${r['usd_per_hour']:.2f}", f"${r['usd']:.4f}" if r["usd"] < 1 else f"${r['usd']:,.2f}"])
    return table(["device", "method", "precision", "change", "verdict", "peak / usable", "micro x accum", "time",
                  "$/h", "cost"], body, tid="gpu-costs", numeric=[5, 7, 8, 9])


def _schedule(sched: dict[str, Any]) -> Raw:
    jobs = table(["job", "device", "start", "finish", "memory", "priority"], [
        [j["name"], j["device"], fmt_seconds(j["start_seconds"]), fmt_seconds(j["finish_seconds"]),
         fmt_bytes(j["memory_bytes"]), j.get("priority", 0)] for j in sched.get("jobs", [])], tid="schedule")
    bad = table(["job", "reason"], [[u["name"], u["reason"]] for u in sched.get("unschedulable", [])])
    return Raw(f"<p>makespan {esc(fmt_seconds(sched.get('makespan_seconds')))} on "
               f"{len(sched.get('devices', []))} devices</p>{jobs}<h3>Unschedulable</h3>{bad}")


def plan_body(store: Store, a: ArtifactView) -> Raw:
    sched = a.json_file("schedule.json")
    if sched is not None:
        return Raw(section("Job schedule", _schedule(sched)))
    plan = a.json_file("plan.json")
    if plan is None:
        return Raw('<p class="err">this plan artifact has no plan.json</p>')
    pred, dev = plan["predicted"], plan["device"]
    head = cards([
        ("verdict", "fits" if plan["fits"] else "does not fit", f"on {plan['devices']}x {dev['name']}"),
        ("peak memory", fmt_bytes(pred["peak_memory_bytes"]), f"of {fmt_bytes(dev['usable_bytes'])} usable"),
        ("step", fmt_seconds(pred["step_seconds"]), f"{pred['steps']} steps"),
        ("total", fmt_seconds(pred["total_seconds"]), f"${pred['cost_usd']:.4f} at ${dev['usd_per_hour']}/h"),
    ])
    chosen = table(["model", "task", "method", "precision", "micro-batch", "accumulation", "checkpointing",
                    "parallelism", "seq len", "packing"], [[
        plan["model"], plan["task"], plan["method"], plan["precision"], plan["micro_batch_size"], plan["grad_accum"],
        plan["activation_checkpointing"], plan["parallelism"], plan["seq_len"], plan["packing"]]], tid="chosen")
    terms = charts.bar_chart([(k.replace("_", " "), v / 1024**2) for k, v in pred["memory_terms"].items()],
                             title="predicted memory by term (MiB)", unit=" MiB", colour="#7a5cc2")
    cands = table(["micro-batch", "accum", "checkpointing", "parallelism", "devices", "bounded heap", "peak", "step",
                   "total", "cost", "verdict"], [
        [c["micro_batch_size"], c["grad_accum"], "on" if c["activation_checkpointing"] else "off", c["parallelism"],
         c.get("devices", 1), fmt_value(c.get("bounded_heap")), fmt_bytes(c["peak_memory_bytes"]),
         fmt_seconds(c["step_seconds"]), fmt_seconds(c["total_seconds"]), f"${c['cost_usd']:.4f}", _verdict(c)]
        for c in plan["candidates"]], cls="candidates", tid="candidates", numeric=[0, 1, 6, 7, 8, 9])
    parts: list[Any] = [head, section("Chosen configuration", chosen),
                        section("Memory", terms), section("Candidates", cands,
                                                          note="best first; rejected candidates say why")]
    if plan.get("suggestion"):
        parts.append(Raw(f'<p class="suggestion">Smallest change that fits: {esc(plan["suggestion"])}</p>'))
    assessments = store.consumers(a, ("assessment",))
    wi = next(((x, x.json_file("assessment.json") or {}) for x in assessments
               if (x.json_file("assessment.json") or {}).get("what_if")), None)
    if wi:
        doc = wi[1]["what_if"]
        parts.append(section("Cost per GPU type", gpu_cost_table([doc["baseline"], *doc["variants"]]),
                             Raw(f'<p class="muted">planner what-if plans from {link(wi[0].url, wi[0].name)}</p>')))
    else:
        parts.append(section("Cost per GPU type", Raw(
            f'<p class="muted">No what-if plans yet: <code>shoestring assess --plan {esc(a.path)}</code> prices this '
            "run on the catalogue GPUs.</p>")))
    p, d = plan["parameters"], plan.get("data", {})
    parts.append(section("Model and data", table(["parameters", "trainable", "tokens", "records", "sequences/epoch",
                                                  "epochs"], [[
        p["total"], p["trainable"], d.get("tokens", "-"), d.get("records", "-"), d.get("sequences_per_epoch", "-"),
        d.get("epochs", "-")]], numeric=[0, 1, 2, 3, 4, 5])))
    inf = plan.get("inference") or {}
    if inf:
        parts.append(section("Inference estimate", table(["batch", "context", "weights", "KV cache", "activations",
                                                          "total"], [[
            inf.get("batch"), inf.get("context"), fmt_bytes(inf.get("weights")), fmt_bytes(inf.get("kv_cache")),
            fmt_bytes(inf.get("activations")), fmt_bytes(inf.get("total"))]])))
    return Raw("".join(esc(x) for x in parts))
