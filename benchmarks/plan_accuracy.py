"""Planned vs measured resident peak (RSS) and step time, through the real plan and train stages.

Each configuration is planned by the real ``plan`` stage (``Workspace.run``: the machine's
calibration on first use, the model's shapes and its shallow twins the first time it is
planned) on the same dataset artifact the trainer reads, then trains for :data:`STEPS`
optimizer steps in a *fresh subprocess* through the real ``train`` stage following that plan
(its defaults: fast paths, glibc's default heap when memory is not tight, bf16 autocast where
asked). Measured = the trainer's peak RSS of its process (what ``top`` shows) and its median
step; the live-tensor peak (RSS above the stage's start) is reported as a detail with
``accelerate estimate-memory``'s figure beside it (its "Training using Adam" column, from
accelerate's own ``calculate_maximum_sizes`` + ``estimate_training_usage`` on the same
meta-device model, because its CLI needs the hub).

Two passes per configuration, in a cache folder that starts empty (``--cache``, a fresh
machine as far as shoestring knows):

* **cold**: planned with no training run on record (the run log is set aside while it
  plans), then trained: that run is filed in the run log (the trainer's feedback);
* **warm**: planned again after that run (the same job's residual, see
  ``shoestring.plan.feedback``) and trained again.

Models: the packaged SmolLM2-135M (Llama) and all-MiniLM-L6-v2 (BERT) configs, resized
with config overrides and written to temporary folders with their real tokenizers; trained
``from_scratch`` (random init) except the rows marked ``pretrained``. Data: Python's own
docs (``pydoc_data.topics``), packed into rows.

    .venv/bin/python benchmarks/plan_accuracy.py --cache /tmp/cal --only 0 1 2 3 4 --json a.json
    .venv/bin/python benchmarks/plan_accuracy.py --cache /tmp/cal --only 5 6 7 8 9 --json b.json
    .venv/bin/python benchmarks/plan_accuracy.py --table a.json b.json   # the markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SMOL = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"

# The two from-scratch Llama shapes (SmolLM2's config resized; vocabulary kept).
LLAMA_4L = {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 688,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}
LLAMA_8L = {"num_hidden_layers": 8, "hidden_size": 512, "intermediate_size": 1376,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64}

BERT_12L = {"num_hidden_layers": 12, "hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8}
FIELDS = ("name", "base", "over", "task", "method", "seq_len", "mbs", "precision", "ckpt", "pretrained")
ROWS: list[tuple[Any, ...]] = [
    # name                                 base    overrides task              method    seq   mbs  prec    ckpt   pretrained
    ("llama-4L-h256 full fp32",             SMOL,   LLAMA_4L, "causal-lm",      "full",   256,  4,  "fp32", False, False),
    ("llama-4L-h256 full fp32 seq1024",     SMOL,   LLAMA_4L, "causal-lm",      "full",   1024, 2,  "fp32", False, False),
    ("llama-4L-h256 full fp32 ckpt",        SMOL,   LLAMA_4L, "causal-lm",      "full",   1024, 2,  "fp32", True,  False),
    ("llama-4L-h256 full bf16",             SMOL,   LLAMA_4L, "causal-lm",      "full",   512,  4,  "bf16", False, False),
    ("llama-8L-h512 full fp32",             SMOL,   LLAMA_8L, "causal-lm",      "full",   512,  2,  "fp32", False, False),
    ("llama-8L-h512 lora fp32",             SMOL,   LLAMA_8L, "causal-lm",      "lora",   512,  4,  "fp32", False, False),
    ("llama-8L-h512 lora ckpt",             SMOL,   LLAMA_8L, "causal-lm",      "lora",   512,  4,  "fp32", True,  False),
    ("smollm2-135M lora fp32 (quickstart)", SMOL,   {},       "causal-lm",      "lora",   256,  4,  "fp32", False, True),
    ("smollm2-135M lora bf16",              SMOL,   {},       "causal-lm",      "lora",   256,  2,  "bf16", False, True),
    ("llama-8L-h512 frozen top-2",          SMOL,   LLAMA_8L, "causal-lm",      "frozen", 512,  2,  "fp32", False, False),
    ("bert-6L mlm full fp32",               MINILM, {},       "masked-lm",      "full",   256,  8,  "fp32", False, False),
    ("bert-12L-h512 mlm full fp32",         MINILM, BERT_12L, "masked-lm",      "full",   128,  8,  "fp32", False, False),
    ("bert-6L classifier full fp32",        MINILM, {},       "classification", "full",   128,  16, "fp32", False, False),
    ("bert-6L classifier lora",             MINILM, {},       "classification", "lora",   256,  16, "fp32", False, False),
]  # fmt: skip
CONFIGS: list[dict[str, Any]] = [dict(zip(FIELDS, row, strict=True)) for row in ROWS]
STEPS = 8


def _model_folder(base: str, over: dict[str, Any], root: Path) -> Path:
    """A local HF folder: the base config with overrides + the base's real tokenizer files."""
    from shoestring.models.loading import hf_folder

    src = Path(hf_folder(base))
    if base == MINILM and not (src / "config.json").is_file():
        src = next(p.parent for p in src.rglob("config.json"))
    key = base + json.dumps(over, sort_keys=True)
    dst = root / f"model-{abs(hash(key)) % 10**8}"
    if dst.exists():
        return dst
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf", ".onnx")):
            shutil.copy(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(over)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _dataset(root: Path, with_labels: bool) -> Path:
    """A dataset artifact folder from Python's docs (real English + code), as curate writes it."""
    import pydoc_data.topics as topics

    d = root / ("dataset-labels" if with_labels else "dataset")
    if d.exists():
        return d
    d.mkdir(parents=True)
    recs = []
    for i, (name, text) in enumerate(sorted(topics.topics.items())):
        for j, chunk in enumerate(text.split("\n\n")):
            if len(chunk) > 200:
                recs.append({"id": f"{name}-{j}", "text": chunk[:4000], "label": ["a", "b"][(i + j) % 2]})
    lines = [json.dumps(r) for r in recs]
    (d / "train.jsonl").write_text("\n".join(lines[:600]) + "\n")
    (d / "validation.jsonl").write_text("")
    (d / "test.jsonl").write_text("")
    (d / "manifest.json").write_text(json.dumps({"kind": "dataset", "hash": f"{abs(hash(d)):064d}"[-64:], "stats": {}}))
    return d


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: train a few steps through the real train stage; return its stats."""
    from shoestring.core.allocator import bound_cpu_allocator

    bounded = spec.get("heap", "bounded") == "bounded"
    if bounded:
        bound_cpu_allocator()
    from shoestring.core.artifact import Artifact
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace
    from shoestring.train.config import TrainConfig

    ws = Workspace(spec["workspace"])
    cfg = TrainConfig(
        dataset=spec["dataset"], model=spec["model"], task=spec["task"], method=spec["method"],
        from_scratch=not spec.get("pretrained", False), seq_len=spec["seq_len"], micro_batch_size=spec["mbs"],
        grad_accum=1, precision=spec["precision"], activation_checkpointing=spec["ckpt"], max_steps=STEPS,
        val_max_examples=0, progress=False, max_examples=spec.get("max_examples"), trainable_layers=2,
        checkpoint_every=1000, fast_paths=spec.get("fast_paths", True), bound_allocator=True if bounded else None,
    )
    inputs = {"dataset": Artifact.load(spec["dataset"])}
    if spec.get("plan"):
        inputs["plan"] = Artifact.load(spec["plan"])
    res = ws.run(get_stage("train"), cfg, inputs, force=True)
    st = res.artifact.stats
    return {"peak_memory_bytes": st["peak_memory_bytes"], "resident_peak_bytes": st.get("resident_peak_bytes"),
            "step_seconds": st["step_seconds"], "trainable": st.get("trainable_parameters"),
            "parameters": st.get("parameters"), "fast_paths": st.get("fast_paths"),
            "cpu_allocator": res.artifact.manifest.get("cpu_allocator"),
            "plan_comparison": res.artifact.manifest.get("plan_comparison")}


def plan_row(spec: dict[str, Any], ws: Path) -> tuple[dict[str, Any], Path, float]:
    """The real plan stage for one configuration (its dataset artifact as input); the plan,
    its artifact folder and the seconds it took (calibration, shapes and twins included)."""
    from shoestring.core.artifact import Artifact
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace
    from shoestring.plan.stage import PlanConfig

    cfg = PlanConfig(model=spec["model"], task=spec["task"], dataset=spec["dataset"], seq_len=spec["seq_len"],
                     method=spec["method"], trainable_layers=2, micro_batch_size=spec["mbs"], grad_accum=1,
                     batch_size=spec["mbs"], activation_checkpointing=spec["ckpt"],
                     precision="bf16-mixed" if spec["precision"] == "bf16" else "fp32",
                     fast_paths=spec.get("fast_paths", True), device="cpu")
    t0 = time.perf_counter()
    res = Workspace(ws).run(get_stage("plan"), cfg, {"dataset": Artifact.load(spec["dataset"])}, force=True)
    plan = json.loads((res.artifact.path / "plan.json").read_text())
    return plan, res.artifact.path, time.perf_counter() - t0


def accelerate_bytes(spec: dict[str, Any]) -> int:
    """accelerate's "Training using Adam" estimate for the same model (its own functions)."""
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    from shoestring.plan.arch import load_model_config, meta_model

    config = load_model_config(spec["model"])
    if spec["task"] == "classification":
        config.num_labels = 2
    total, _largest = calculate_maximum_sizes(meta_model(config, spec["task"]))
    return int(max(estimate_training_usage(total, "bfloat16" if spec["precision"] == "bf16" else "float32").values()))


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown row per configuration: resident peak and step time, cold and warm."""
    by: dict[int, dict[str, Any]] = {}
    for r in rows:
        by.setdefault(r["i"], {"name": r["name"]})[r["phase"]] = r

    def pct(p: float | None, m: float | None) -> str:
        return f"{p / m - 1:+.1%}" if p and m else "-"

    def mib(n: float | None) -> str:
        return f"{n / 2**20:,.0f}" if n else "-"

    out = ["| # | configuration | RSS MiB measured / planned, cold | err | warm | err | live MiB measured / "
           "planned | accelerate err | step s measured / planned, cold | err | warm | err |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, d in sorted(by.items()):
        cells = [str(i), d["name"]]
        cold, warm = d.get("cold"), d.get("warm")
        for r in (cold, warm):
            if r:
                m, p = r["meas"].get("resident_peak_bytes"), r["pred"].get("resident_peak_bytes")
                cells += [f"{mib(m)} / {mib(p)}", pct(p, m)]
            else:
                cells += ["-", "-"]
        if cold:
            m, p = cold["meas"]["peak_memory_bytes"], cold["pred"].get("live_peak_bytes")
            cells += [f"{mib(m)} / {mib(p)}", pct(cold.get("accelerate_bytes"), m)]
        else:
            cells += ["-", "-"]
        for r in (cold, warm):
            if r:
                m, p = r["meas"]["step_seconds"], r["pred"]["step_seconds"]
                cells += [f"{m:.3f} / {p:.3f}", pct(p, m)]
            else:
                cells += ["-", "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(rows: list[dict[str, Any]]) -> str:
    """How many rows are within the issue's targets, per phase."""
    lines = []
    for phase, mem_tol, step_tol in (("cold", 0.15, 0.25), ("warm", 0.10, 0.20)):
        rs = [r for r in rows if r["phase"] == phase]
        if not rs:
            continue
        mem = sum(1 for r in rs if abs(r["pred"]["resident_peak_bytes"] / r["meas"]["resident_peak_bytes"] - 1)
                  <= mem_tol)
        step = sum(1 for r in rs if abs(r["pred"]["step_seconds"] / r["meas"]["step_seconds"] - 1) <= step_tol)
        lines.append(f"{phase}: RSS within ±{mem_tol:.0%} on {mem}/{len(rs)}, step within ±{step_tol:.0%} on "
                     f"{step}/{len(rs)}")
    return "\n".join(lines)


def _train(spec: dict[str, Any]) -> dict[str, Any] | None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                         text=True, env=env, timeout=1200)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        print(f"[{spec['name']}]: training FAILED\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return dict(json.loads(line[-1][7:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", type=int, nargs="*", help="indices of CONFIGS to run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help="shoestring cache folder (empty = a fresh machine); kept across chunks")
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    ap.add_argument("--table", type=Path, nargs="+", help="print the table of earlier --json files (no runs)")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(json.loads(args.child))), flush=True)
        return
    if args.table:
        rows = [r for f in args.table for r in json.loads(f.read_text())]
        print(table(rows) + "\n\n" + summary(rows))
        return
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
        real = Path(os.environ.get("SHOESTRING_CACHE", Path.home() / ".cache" / "shoestring")).expanduser()
        if not (args.cache / "models").exists() and (real / "models").is_dir():
            (args.cache / "models").symlink_to(real / "models")  # packaged models, converted once
        os.environ["SHOESTRING_CACHE"] = str(args.cache)
    from shoestring.plan.feedback import run_log_path

    root = Path(tempfile.mkdtemp(prefix="plan-acc-"))
    rows: list[dict[str, Any]] = []
    for i in args.only if args.only else range(len(CONFIGS)):
        spec = dict(CONFIGS[i])
        model = SMOL if spec.get("pretrained") else str(_model_folder(spec["base"], spec["over"], root))
        spec.update(model=model, dataset=str(_dataset(root, spec["task"] == "classification")), heap="default")
        for phase in ("cold", "warm"):
            log = run_log_path()
            held = log.with_suffix(".held")
            if phase == "cold" and log.exists():  # cold: plan as if no run had been filed on this machine
                log.rename(held)
            try:
                plan, plan_dir, plan_s = plan_row(spec, root / f"plan{i}-{phase}")
            finally:
                if held.exists():
                    held.rename(log)
            meas = _train({**spec, "plan": str(plan_dir), "workspace": str(root / f"ws{i}-{phase}")})
            if meas is None:
                continue
            pred = plan["predicted"]
            row = {"i": i, "name": spec["name"], "phase": phase, "pred": pred, "meas": meas, "plan_seconds": plan_s,
                   "calibration": plan.get("calibration"), "twins": plan.get("twins"), "feedback": plan.get("feedback"),
                   "accelerate_bytes": accelerate_bytes(spec) if phase == "cold" else None}
            rows.append(row)
            if args.json:  # after every row, so a run cut short keeps what it measured
                args.json.write_text(json.dumps(rows, indent=1))
            rm, rp = meas.get("resident_peak_bytes") or 0, pred.get("resident_peak_bytes") or 0
            print(f"[{i}] {spec['name']} {phase}: RSS {rm / 2**20:.0f} MiB measured, {rp / 2**20:.0f} planned "
                  f"({rp / max(rm, 1) - 1:+.1%}); step {meas['step_seconds']:.3f} s vs {pred['step_seconds']:.3f} s "
                  f"({pred['step_seconds'] / meas['step_seconds'] - 1:+.1%}); plan {plan_s:.1f} s "
                  f"(calibration {plan.get('calibration', {}).get('seconds_now')} s)", file=sys.stderr, flush=True)
    print(table(rows) + "\n\n" + summary(rows))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
