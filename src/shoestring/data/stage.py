"""The ``curate`` stage: raw multi-source data -> a dataset artifact, every record accounted for.

Two phases (see docs/ARCHITECTURE.md, "Curation"):

1. **per-record, parallel** - sources are read in order and cut into chunks; each chunk runs
   normalise -> quality -> PII -> label votes -> exact key + MinHash signature on an executor
   (local processes or Ray) and lands in ``work_dir`` as a shard with a completion marker;
2. **global, streaming** - dedup decisions, k-anonymity, label combination, leak-free split,
   then the write-out of ``train/validation/test.jsonl``, ``quarantine.jsonl`` and the data card.

A killed run resumes from the finished shards; the output is byte-identical to an
uninterrupted run because every step is a deterministic function of the config and input.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.artifact import atomic_write_json, atomic_write_text
from shoestring.core.errors import ShoestringError
from shoestring.data.config import CurateConfig, SourceConfig

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.workspace import StageContext
    from shoestring.data.executors import Executor
    from shoestring.data.records import Quarantined, Record

__all__ = ["CONFIG", "KIND", "SCHEMA_VERSION", "SUMMARY", "build", "summarize"]

KIND = "dataset"
SCHEMA_VERSION = 2  # 2: exact-verified near-dup clusters with re-centring
SUMMARY = "Curate raw multi-source data into a clean, deduplicated, PII-safe, split dataset with a data card."


CONFIG = CurateConfig


def _sources(cfg: CurateConfig) -> list[SourceConfig]:
    from shoestring.data.readers import source_name

    sources = list(cfg.sources)
    if cfg.input is not None:
        sources.append(SourceConfig(path=cfg.input))
    if not sources:
        raise ShoestringError("curate: no data; pass --input FILE, or list `sources:` in the recipe or a --config YAML")
    names = [source_name(s) for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ShoestringError(f"curate: two sources are named {dup[0]!r}; give each a distinct `name:`")
    return sources


def _chunks(cfg: CurateConfig, sources: list[SourceConfig]) -> Iterator[tuple[int, list[Record | Quarantined]]]:
    from shoestring.data.readers import read_source

    buf: list[Record | Quarantined] = []
    index = 0
    for src in sources:
        for item in read_source(src, cfg.text_field, cfg.limit):
            buf.append(item)
            if len(buf) >= cfg.chunk_size:
                yield index, buf
                index, buf = index + 1, []
    if buf:
        yield index, buf


def run_map_phase(
    cfg: CurateConfig, sources: list[SourceConfig], work: Path, console: Console, executor: Executor
) -> list[dict[str, Any]]:
    """Phase 1 over all chunks, skipping chunks finished by an earlier (killed) run."""
    from shoestring.data.pipeline import load_chunk_stats, process_chunk

    cfg_json = cfg.model_dump(mode="json")
    results: dict[int, dict[str, Any]] = {}
    resumed = 0

    def tasks() -> Iterator[tuple[Any, ...]]:
        nonlocal resumed
        for index, items in _chunks(cfg, sources):
            done = load_chunk_stats(work, index)
            if done is not None:
                results[index] = done
                resumed += 1
                continue
            yield (cfg_json, index, items, str(work))

    for res in executor.map(process_chunk, tasks()):
        results[int(res["index"])] = res
    if resumed:
        console.print(f"  curate: resumed {resumed} finished chunk(s) from {work}")
    return [results[i] for i in range(len(results))]


def _merge_ops(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    from shoestring.data.pipeline import MAP_OPS
    from shoestring.data.records import OpStats

    merged = {name: OpStats(name) for name in MAP_OPS}
    for ch in chunks:
        for name, data in ch["ops"].items():
            merged[name].merge(OpStats.from_json(name, data))
    return merged


def build(cfg: CurateConfig, ctx: StageContext) -> dict[str, Any]:
    from shoestring.data.datacard import length_histogram, render_html
    from shoestring.data.executors import make_executor
    from shoestring.data.finalize import decide, write_dataset
    from shoestring.data.label import label_stats
    from shoestring.data.readers import source_name

    sources = _sources(cfg)
    pseudonymises = cfg.pii.enabled and cfg.pii.mode == "pseudonym"
    if cfg.share.enabled or pseudonymises:  # before any work: a missing key would fail in a worker, or at the end
        from shoestring.data.pii import pseudonym_key

        pseudonym_key(cfg.pii, shareable=cfg.share.enabled)
    wall = {"start": time.perf_counter()}
    # One executor for both parallel parts (the map phase, then the dedup batches): workers start once.
    executor = make_executor(cfg.executor, cfg.workers, ctx.console)
    try:
        cpu = time.process_time()
        chunks = run_map_phase(cfg, sources, ctx.work_dir, ctx.console, executor)
        wall["map"] = time.perf_counter()
        wall["main_cpu_map"] = time.process_time() - cpu
        ops = _merge_ops(chunks)
        d = decide(cfg, ctx.work_dir, len(chunks), ops["label"].counters, executor)
        wall["dedup"] = time.perf_counter()
    finally:
        executor.close()
    watch = getattr(executor, "watch", None)
    if watch is not None:  # Ray: where the tasks ran, and which nodes died meanwhile (their tasks re-ran)
        names = {n.node_id: n.name for n in [*watch.alive.values(), *watch.dead]}
        ctx.extra_manifest["ray"] = {
            "tasks_by_node": {names.get(k, k[:12]): v for k, v in sorted(getattr(executor, "tasks_by_node", {}).items())},
            "dead_nodes": [n.name for n in watch.dead],
        }
    cpu = time.process_time()
    out = write_dataset(cfg, ctx.work_dir, ctx.out_dir, len(chunks), d)
    wall["write"] = time.perf_counter()
    wall["main_cpu_write"] = time.process_time() - cpu

    read = sum(int(c["read"]) for c in chunks)
    quarantined = sum(int(c["quarantined"]) for c in chunks)
    drops: dict[str, dict[str, int]] = {}
    for name, st in ops.items():
        if st.dropped:
            drops[name] = dict(sorted(st.dropped.items()))
    for (op, reason), n in sorted(out["global_drops"].items()):
        drops.setdefault(op, {})[reason] = drops.get(op, {}).get(reason, 0) + n
    dropped = sum(sum(v.values()) for v in drops.values())
    kept = sum(out["split_sizes"].values())
    if read != kept + dropped + quarantined:  # an internal bug, never a user error
        raise RuntimeError(
            f"curate accounting broken: read {read} != kept {kept} + dropped {dropped} + quarantined {quarantined}"
        )

    read_by_source: Counter[str] = Counter()
    for c in chunks:
        read_by_source.update(c["read_by_source"])
    quarantined_by_source: Counter[str] = Counter()
    pii = {k.removeprefix("pii:"): v for k, v in sorted(ops["pii"].counters.items()) if k.startswith("pii:")}
    card: dict[str, Any] = {
        "name": ", ".join(source_name(s) for s in sources),
        "accounting": {
            "read": read,
            "kept": kept,
            "dropped": dropped,
            "quarantined": quarantined,
            "augmented": out["augmented"],
        },
        "sources": {
            source_name(s): {
                "read": read_by_source.get(source_name(s), 0),
                "quarantined": quarantined_by_source.get(source_name(s), 0),
                "kept": out["kept_by_source"].get(source_name(s), 0),
            }
            for s in sources
        },
        "drops": drops,
        "quarantine": out["quarantine_reasons"],
        "splits": out["split_sizes"],
        "leak_check": d.leak,
        "lengths": length_histogram(out["lengths"]),
        "pii": pii,
        "pii_records": ops["pii"].counters.get("records_with_pii", 0),
        "normalize": dict(sorted(ops["normalize"].counters.items())),
        "dedup": d.dedup,
        "duplicate_clusters": out["top_clusters"],
        "k_anonymity": d.k_anonymity,
        "labels": {},
    }
    _fill_quarantine_by_source(ctx.out_dir / "quarantine.jsonl", card)
    if cfg.labels.functions or out["label_by_split"]:
        card["labels"] = {"distribution": out["label_by_split"]}
        if cfg.labels.functions:
            card["labels"].update(label_stats(cfg.labels, ops["label"].counters, ops["label"].seen, d.weights))
    if cfg.share.enabled:
        from shoestring.data.share import write_release

        card["release"] = write_release(cfg, ctx.out_dir, pii)
    atomic_write_json(ctx.out_dir / "datacard.json", card)
    atomic_write_text(ctx.out_dir / "datacard.html", render_html(card))
    return {
        "read": read,
        "kept": kept,
        "dropped": dropped,
        "quarantined": quarantined,
        "augmented": out["augmented"],
        "dropped_by": drops,
        "quarantine_reasons": out["quarantine_reasons"],
        "splits": out["split_sizes"],
        "pii": pii,
        "leak_check": d.leak,
        "chunks": len(chunks),
        **({"release": card["release"]} if "release" in card else {}),
        "profile": {**_profile(chunks, d.profile, wall), "near_dup_index": d.index_run},
    }


def _profile(chunks: list[dict[str, Any]], decide_cpu: dict[str, float], wall: dict[str, float]) -> dict[str, Any]:
    """Where the time went: wall seconds per phase, CPU seconds per step (workers' summed), peak RSS."""
    cpu: Counter[str] = Counter()
    for c in chunks:
        cpu.update(c.get("cpu_seconds", {}))
    cpu.update(decide_cpu)
    cpu["main_read_and_dispatch"] = wall["main_cpu_map"]  # reading sources, cutting and sending chunks
    cpu["main_write_dataset"] = wall["main_cpu_write"]
    peak_kib = _peak_rss_kib()
    return {
        "wall_seconds": {
            "read_and_map": round(wall["map"] - wall["start"], 3),
            "dedup_index_and_clusters": round(wall["dedup"] - wall["map"], 3),
            "write": round(wall["write"] - wall["dedup"], 3),
        },
        "cpu_seconds": {k: round(v, 3) for k, v in sorted(cpu.items())},
        "main_process_peak_rss_mib": round(peak_kib / 1024, 1) if peak_kib else None,
    }


def _peak_rss_kib() -> int | None:
    """This process's peak resident set (VmHWM, KiB); None off Linux.

    Not ``getrusage``'s ru_maxrss: that one survives fork + exec, so a process started by a
    big parent reports the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _fill_quarantine_by_source(path: Path, card: dict[str, Any]) -> None:
    import json

    with open(path, encoding="utf-8") as fh:
        for line in fh:
            src = json.loads(line)["source"]
            if src in card["sources"]:
                card["sources"][src]["quarantined"] += 1


def summarize(artifact: Artifact, console: Console) -> None:
    """Print the accounting, drops and splits after `shoestring curate`."""
    from rich.table import Table

    s = artifact.stats
    console.print(
        f"[bold]read {s['read']}[/] = kept {s['kept']} + dropped {s['dropped']} + quarantined {s['quarantined']}"
        + (f"  (+{s['augmented']} augmented)" if s.get("augmented") else "")
    )
    table = Table(title="dropped by op / reason")
    for col in ("op", "reason", "records"):
        table.add_column(col)
    for op, reasons in s.get("dropped_by", {}).items():
        for reason, n in reasons.items():
            table.add_row(op, reason, str(n))
    for reason, n in s.get("quarantine_reasons", {}).items():
        table.add_row("quarantine", reason, str(n))
    console.print(table)
    console.print("splits: " + ", ".join(f"{k} {v}" for k, v in s.get("splits", {}).items()))
    if s.get("pii"):
        console.print("PII removed: " + ", ".join(f"{k} {v}" for k, v in s["pii"].items()))
    console.print(f"data card: {artifact.path / 'datacard.html'}")
