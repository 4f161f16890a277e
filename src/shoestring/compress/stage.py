"""`shoestring compress`: quantise, prune, distil or LoRA-merge a model, measured against its parent.

The output is a model artifact (``model/``) that evaluate, serve and export accept, plus
``compression_report.json`` / ``.html``: size, latency, tokens/s, perplexity (or the
encoder/classifier equivalent) and KL divergence versus the parent, and the gate verdict.
A failed gate stops the recipe with one line naming the metric (unless ``gate_action: warn``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoestring.compress.config import CompressConfig

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.workspace import StageContext

__all__ = ["CONFIG", "KIND", "SCHEMA_VERSION", "SUMMARY", "CompressConfig", "build", "summarize"]

KIND = "model"
SCHEMA_VERSION = 1
SUMMARY = "Quantise (int8/int4), prune, distil or LoRA-merge a model; gate it on measured quality, KL and speed."

CONFIG = CompressConfig


def _parent_task(cfg: CompressConfig, ctx: StageContext) -> str:
    from shoestring.models import HF_TASKS, normalize_task
    from shoestring.models.packaged import packaged_model

    if cfg.task:
        return cfg.task
    art = ctx.inputs.get("model")
    if art is not None and art.manifest.get("task"):
        return normalize_task(str(art.manifest["task"]), allowed=HF_TASKS, who="compress")
    pm = packaged_model(cfg.model)
    return normalize_task(pm.task if pm else None, allowed=HF_TASKS, who="compress")


def _texts(ctx: StageContext, split: str) -> tuple[list[str], str]:
    from shoestring.compress.regression import builtin_texts, dataset_texts

    ds = ctx.inputs.get("dataset")
    if ds is not None:
        names = ("test.jsonl", "validation.jsonl") if split == "heldout" else ("train.jsonl",)
        for name in names:
            if (ds.path / name).is_file() and (ds.path / name).stat().st_size > 0:
                return dataset_texts(ds.path / name), f"{ds.path.name}/{name}"
    return builtin_texts("heldout" if split == "heldout" else "train"), f"pydoc_data.topics ({split})"


def build(cfg: CompressConfig, ctx: StageContext) -> dict[str, Any]:
    import copy

    import torch

    from shoestring.compress import regression as rg
    from shoestring.compress.modelio import load_compressed, save_model_folder
    from shoestring.core.artifact import atomic_write_json, atomic_write_text
    from shoestring.core.errors import ShoestringError
    from shoestring.models import load_tokenizer, resolve_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    task = _parent_task(cfg, ctx)
    art = ctx.inputs.get("model")
    spec = str(art.path) if art is not None else cfg.model
    say = ctx.console.print
    if cfg.method == "merge" and resolve_model(spec).adapter is None:
        raise ShoestringError(f"method 'merge' needs a LoRA adapter model, but '{cfg.model}' is a full model")
    parent = load_compressed(spec, task)
    tokenizer = load_tokenizer(spec)
    heldout, heldout_src = _texts(ctx, "heldout")
    blocks = rg.encode_blocks(tokenizer, heldout, cfg.eval_seq_len, cfg.eval_blocks)
    extra: dict[str, Any] = {"method": cfg.method, "task": task, "heldout_source": heldout_src}

    base = parent
    if hasattr(parent, "merge_and_unload"):  # a PEFT adapter model: merge it, then check it
        from shoestring.compress.transforms import merge_adapter

        base, diff = merge_adapter(parent, blocks[:2, :64])
        extra["merge_max_abs_logit_diff"] = diff
        if diff > cfg.merge_tolerance:
            raise ShoestringError(
                f"merged model differs from the adapter model by {diff:.3g} in logits (> merge_tolerance "
                f"{cfg.merge_tolerance:g}); check the adapter, or raise merge_tolerance"
            )
        say(f"merged LoRA adapter (max |logit diff| {diff:.2e})")

    qspec = None
    if cfg.method == "merge":
        child = base
    elif cfg.method.startswith("int"):
        from shoestring.compress.quant import quantize_model

        child = copy.deepcopy(base) if base is parent else base
        qspec = quantize_model(child, cfg.method, group_size=cfg.group_size, quantize_head=cfg.quantize_head)
        extra["quantized_modules"] = len(qspec.modules)
    else:
        from shoestring.compress.transforms import shrink_and_distill

        train_texts, train_src = _texts(ctx, "train")
        n_train = max(cfg.calibration_blocks, cfg.train_batch_size * max(cfg.distill_steps, 1), 8)
        train_blocks = rg.encode_blocks(tokenizer, train_texts, cfg.seq_len, min(n_train, 512))
        child, info = shrink_and_distill(base, cfg, task, train_blocks, ctx.work_dir, say)
        extra.update(info, train_source=train_src)

    model_dir = ctx.out_dir / "model"
    save_model_folder(child, tokenizer, model_dir, task, qspec)
    del child
    reloaded = load_compressed(model_dir, task)  # measure what was saved, not what is in memory
    say(f"measuring {cfg.method} against its parent on {blocks.shape[0]}x{blocks.shape[1]} held-out tokens")
    report = rg.measure_pair(
        parent,
        reloaded,
        blocks,
        task=task,
        latency_tokens=cfg.latency_tokens,
        latency_runs=cfg.latency_runs,
        gen_tokens=cfg.gen_tokens,
    )
    report.update(extra)
    report["child_file_bytes"] = rg.folder_bytes(model_dir)
    if qspec is not None:
        from shoestring.models.quantized import quantized_modules

        report["backend"] = sorted({m.backend for m in quantized_modules(reloaded).values()})
    failures = rg.check_gate(report, cfg.gate)
    report["gate"] = {**cfg.gate.model_dump(), "action": cfg.gate_action, "passed": not failures, "failures": failures}
    page = rg.render_html(report, f"Compression report: {cfg.method} of {cfg.model}")
    if failures and cfg.gate_action == "fail":
        atomic_write_json(ctx.work_dir / "compression_report.json", report)
        atomic_write_text(ctx.work_dir / "compression_report.html", page)
        raise ShoestringError(
            f"compression gate failed for {cfg.method}: {'; '.join(failures)} "
            f"(report: {ctx.work_dir / 'compression_report.html'}); relax the gate, pick a milder method, "
            "or set gate_action: warn"
        )
    if failures:
        say(f"[yellow]gate failed (warn): {'; '.join(failures)}[/]")
    atomic_write_json(ctx.out_dir / "compression_report.json", report)
    atomic_write_text(ctx.out_dir / "compression_report.html", page)
    ctx.extra_manifest["task"] = task
    ctx.extra_manifest["compression"] = {"method": cfg.method, "parent": cfg.model, "gate_passed": not failures}
    keys = (*rg.COMPARISON_KEYS, "parent_tokens_per_s", "child_tokens_per_s")
    return {k: report[k] for k in keys if k in report} | {"gate_passed": not failures, "method": cfg.method}


def summarize(artifact: Artifact, console: Console) -> None:
    """Print the parent-vs-compressed table and the gate verdict."""
    import json

    from rich.table import Table

    rep = json.loads(artifact.file("compression_report.json").read_text())
    table = Table(title=f"{rep.get('method')} vs parent")
    for col in ("metric", "parent", "compressed"):
        table.add_column(col)
    rows = [
        ("weights (MB)", "parent_weight_bytes", "child_weight_bytes", 1e-6),
        ("forward latency (ms)", "parent_latency_s", "child_latency_s", 1e3),
        ("tokens/s", "parent_tokens_per_s", "child_tokens_per_s", 1.0),
        ("perplexity", "parent_ppl", "child_ppl", 1.0),
    ]
    for label, pk, ck, mult in rows:
        if rep.get(pk) is not None and rep.get(ck) is not None:
            table.add_row(label, f"{rep[pk] * mult:.4g}", f"{rep[ck] * mult:.4g}")
    console.print(table)
    for key in ("kl_mean", "cosine_to_parent", "agreement", "speedup"):
        if rep.get(key) is not None:
            console.print(f"{key}: {rep[key]:.4g}")
    if rep.get("speedup") is not None and rep["speedup"] < 1.0:
        console.print(f"[yellow]the compressed model is {1 / rep['speedup']:.2f}x slower than its parent here[/]")
    gate = rep.get("gate", {})
    console.print("gate: " + ("[green]PASS[/]" if gate.get("passed") else f"[red]FAIL[/] {gate.get('failures')}"))
