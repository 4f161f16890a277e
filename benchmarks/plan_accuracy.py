"""Predicted vs measured peak memory and step time, through the real `shoestring train` path.

Each configuration trains for a few optimizer steps in a *fresh subprocess* (so memory starts
clean) through ``Workspace.run(get_stage("train"), TrainConfig(...))``: the trainer's own
``PeakMemoryMeter`` (CPU: peak RSS above the pre-model baseline) and median step time are
read from the model artifact's stats. The planner predicts both in the parent process from
the same config. ``accelerate estimate-memory``'s figure (its "Training using Adam" column,
computed by accelerate's own ``calculate_maximum_sizes`` + ``estimate_training_usage`` on the
same meta-device model, because its CLI needs the hub) is reported beside ours.

Models: the packaged SmolLM2-135M (Llama) and all-MiniLM-L6-v2 (BERT) configs, resized
with config overrides and written to temporary folders with their real tokenizers; trained
``from_scratch`` (random init) except the rows marked ``pretrained``. Data: Python's own
docs (``pydoc_data.topics``), packed into rows.

Each configuration runs under both CPU heaps the trainer can pick (``--heaps``): ``bounded``
(``bound_allocator: true``: resident memory = live tensors, what the memory model predicts;
every large block page-faults) and ``default`` (glibc's own heap, the trainer's choice when
the plan fits with head-room: the fast one). The trainer's ``fast_paths`` stay on (its
default; ``--stock`` turns them off). The planner is given the same heap and the dataset's
packed document mix (``shoestring.plan.tokens.packed_segments``), as ``shoestring plan
--dataset`` gives it.

    .venv/bin/python benchmarks/plan_accuracy.py            # all configurations (~10 min on 2 cores)
    .venv/bin/python benchmarks/plan_accuracy.py --only 0 3 # some of them
    .venv/bin/python benchmarks/plan_accuracy.py --calibrate --only 4 5 --json out.json  # calibrate first
    .venv/bin/python benchmarks/plan_accuracy.py --rescore out.json  # re-predict saved measurements
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

# name, base, overrides, task, method, seq_len, micro-batch, precision, checkpointing, pretrained
CONFIGS: list[dict[str, Any]] = [
    {"name": "llama-4L-h256 full fp32", "base": SMOL, "over": LLAMA_4L,
     "task": "causal-lm", "method": "full", "seq_len": 256, "mbs": 4, "precision": "fp32", "ckpt": False},
    {"name": "llama-4L-h256 full fp32 seq1024", "base": SMOL, "over": LLAMA_4L,
     "task": "causal-lm", "method": "full", "seq_len": 1024, "mbs": 2, "precision": "fp32", "ckpt": False},
    {"name": "llama-4L-h256 full fp32 ckpt", "base": SMOL, "over": LLAMA_4L,
     "task": "causal-lm", "method": "full", "seq_len": 1024, "mbs": 2, "precision": "fp32", "ckpt": True},
    {"name": "llama-4L-h256 full bf16", "base": SMOL, "over": LLAMA_4L,
     "task": "causal-lm", "method": "full", "seq_len": 512, "mbs": 4, "precision": "bf16", "ckpt": False},
    {"name": "llama-8L-h512 full fp32", "base": SMOL, "over": LLAMA_8L,
     "task": "causal-lm", "method": "full", "seq_len": 512, "mbs": 2, "precision": "fp32", "ckpt": False},
    {"name": "llama-8L-h512 lora fp32", "base": SMOL, "over": LLAMA_8L,
     "task": "causal-lm", "method": "lora", "seq_len": 512, "mbs": 4, "precision": "fp32", "ckpt": False},
    {"name": "llama-8L-h512 lora ckpt", "base": SMOL, "over": LLAMA_8L,
     "task": "causal-lm", "method": "lora", "seq_len": 512, "mbs": 4, "precision": "fp32", "ckpt": True},
    {"name": "smollm2-135M lora fp32 (quickstart)", "base": SMOL, "over": {}, "pretrained": True,
     "task": "causal-lm", "method": "lora", "seq_len": 256, "mbs": 4, "precision": "fp32", "ckpt": False},
    {"name": "smollm2-135M lora bf16", "base": SMOL, "over": {}, "pretrained": True,
     "task": "causal-lm", "method": "lora", "seq_len": 256, "mbs": 2, "precision": "bf16", "ckpt": False},
    {"name": "llama-8L-h512 frozen top-2", "base": SMOL, "over": LLAMA_8L,
     "task": "causal-lm", "method": "frozen", "seq_len": 512, "mbs": 2, "precision": "fp32", "ckpt": False},
    {"name": "bert-6L mlm full fp32", "base": MINILM, "over": {},
     "task": "masked-lm", "method": "full", "seq_len": 256, "mbs": 8, "precision": "fp32", "ckpt": False},
    {"name": "bert-12L-h512 mlm full fp32", "base": MINILM, "over": {"num_hidden_layers": 12, "hidden_size": 512,
     "intermediate_size": 2048, "num_attention_heads": 8},
     "task": "masked-lm", "method": "full", "seq_len": 128, "mbs": 8, "precision": "fp32", "ckpt": False},
    {"name": "bert-6L classifier full fp32", "base": MINILM, "over": {},
     "task": "classification", "method": "full", "seq_len": 128, "mbs": 16, "precision": "fp32", "ckpt": False},
    {"name": "bert-6L classifier lora", "base": MINILM, "over": {},
     "task": "classification", "method": "lora", "seq_len": 256, "mbs": 16, "precision": "fp32", "ckpt": False},
]
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
    from shoestring.plan.allocator import bound_cpu_allocator

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
        val_max_examples=0, progress=False, tracking={"tensorboard": False}, max_examples=spec.get("max_examples"),
        checkpoint_every=1000, fast_paths=spec.get("fast_paths", True), bound_allocator=bounded,
    )
    res = ws.run(get_stage("train"), cfg, {"dataset": Artifact.load(spec["dataset"])}, force=True)
    st = res.artifact.stats
    return {"peak_memory_bytes": st["peak_memory_bytes"], "step_seconds": st["step_seconds"],
            "trainable": st.get("trainable_parameters"), "parameters": st.get("parameters"),
            "fast_paths": st.get("fast_paths"), "cpu_allocator": res.artifact.manifest.get("cpu_allocator")}


def _segments(spec: dict[str, Any]) -> tuple[tuple[int, float], ...]:
    """The dataset's packed document mix, as `shoestring plan --dataset` computes it."""
    if spec["task"] != "causal-lm":
        return ()
    from shoestring.models.loading import load_tokenizer
    from shoestring.plan.tokens import count_dataset_tokens, packed_segments

    _, lengths = count_dataset_tokens(Path(spec["dataset"]) / "train.jsonl", load_tokenizer(spec["model"]))
    return packed_segments(lengths, spec["seq_len"], chunk=True)[0]


def _record_lengths(spec: dict[str, Any]) -> tuple[int, ...]:
    """Padded batches (the classifier rows): the records' length quantiles, as `shoestring plan` reads them."""
    if spec["task"] != "classification":
        return ()
    from shoestring.models.loading import load_tokenizer
    from shoestring.plan.tokens import count_dataset_tokens, length_quantiles

    _, lengths = count_dataset_tokens(Path(spec["dataset"]) / "train.jsonl", load_tokenizer(spec["model"]))
    return length_quantiles(lengths, spec["seq_len"])


def _setup(spec: dict[str, Any]) -> Any:
    from shoestring.plan.memory import TrainingSetup

    return TrainingSetup(
        task=spec["task"], method=spec["method"], trainable_layers=2,
        precision="bf16-mixed" if spec["precision"] == "bf16" else "fp32",
        activation_checkpointing=spec["ckpt"], micro_batch_size=spec["mbs"], seq_len=spec["seq_len"],
        device_kind="cpu", fast_paths=spec.get("fast_paths", True), doc_segments=spec.get("segments", ()),
        bounded_heap=spec.get("heap", "bounded") == "bounded", record_lengths=tuple(spec.get("record_lengths", ())),
    )


def _config(spec: dict[str, Any]) -> Any:
    from shoestring.plan.arch import load_model_config

    config = load_model_config(spec["model"])
    if spec["task"] == "classification":
        config.num_labels = 2
    return config


def calibrate_row(spec: dict[str, Any]) -> float:
    """`--calibrate`'s shape timing for one configuration (cached per machine); seconds it took."""
    from shoestring.plan.calibrate import calibrate_shapes

    t0 = time.perf_counter()
    calibrate_shapes(_config(spec), _setup(spec))
    return time.perf_counter() - t0


def predict(spec: dict[str, Any], overhead: int | None) -> dict[str, Any]:
    """Parent process: the planner's prediction for the same configuration, through the
    search's own costing of one candidate (``shoestring.plan.search.evaluate``)."""
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    from shoestring.plan.arch import describe_model, meta_model
    from shoestring.plan.hardware import cpu_device
    from shoestring.plan.search import Workload, evaluate, measured_matmul_seconds

    config = _config(spec)
    task = spec["task"]
    shape = describe_model(config, task)
    setup = _setup(spec)
    dev = cpu_device()
    cand = evaluate(config, shape, setup, Workload(sequences=spec["mbs"], tokens_per_sequence=spec["seq_len"],
                                                   batch_size=spec["mbs"]),
                    dev, memory_limit=2**62, framework_overhead=overhead, grad_accum=1)
    mem = cand.memory
    step = cand.run.step_seconds
    from shoestring.plan.allocator import UNBOUNDED_HEAP_FACTOR

    shaped = measured_matmul_seconds(config, setup, dev)
    total, _largest = calculate_maximum_sizes(meta_model(config, task))
    acc = max(estimate_training_usage(total, "bfloat16" if spec["precision"] == "bf16" else "float32").values())
    return {"peak_memory_bytes": mem.peak_bytes, "terms": mem.terms(), "step_seconds": step,
            "resident_default_heap_upper_bytes": int(mem.peak_bytes * UNBOUNDED_HEAP_FACTOR),
            "matmul_seconds": shaped, "accelerate_bytes": int(acc), "trainable": mem.trainable_params}


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown row per configuration: memory (bounded heap) with accelerate's figure, the
    default heap's resident peak against the plan's, and step time under each heap."""
    by: dict[int, dict[str, Any]] = {}
    for r in rows:
        by.setdefault(r["i"], {"name": r["name"]})[r.get("heap", "bounded")] = r

    def pct(a: float | None, b: float | None) -> str:
        return f"{a / b - 1:+.1%}" if a and b else "-"

    def mib(n: float | None) -> str:
        return f"{n / 2**20:.0f}" if n else "-"

    out = ["| # | configuration | bounded peak MiB measured / ours | err | accelerate err | default-heap resident MiB "
           "measured / plan's bound | within | step s bounded measured / ours | err | step s default measured / ours | err |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, d in sorted(by.items()):
        b, g = d.get("bounded"), d.get("default")
        cells = [str(i), d["name"]]
        if b:
            mp, pp = b["meas"]["peak_memory_bytes"], b["pred"]["peak_memory_bytes"]
            cells += [f"{mib(mp)} / {mib(pp)}", pct(pp, mp), pct(b["pred"]["accelerate_bytes"], mp)]
        else:
            cells += ["-", "-", "-"]
        if g:
            mp, pp = g["meas"]["peak_memory_bytes"], g["pred"].get("resident_default_heap_upper_bytes")
            cells += [f"{mib(mp)} / {mib(pp)}", ("yes" if mp <= pp else "NO") if pp else "-"]
        else:
            cells += ["-", "-"]
        for r in (b, g):
            if r:
                ms, ps = r["meas"]["step_seconds"], r["pred"]["step_seconds"]
                cells += [f"{ms:.3f} / {ps:.3f}", pct(ps, ms)]
            else:
                cells += ["-", "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", type=int, nargs="*", help="indices of CONFIGS to run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    ap.add_argument("--rescore", type=Path, help="re-predict the measurements saved by --json (no training)")
    ap.add_argument("--stock", action="store_true",
                    help="train (and plan) with the trainer's fast paths off (fast_paths: false)")
    ap.add_argument("--heaps", nargs="+", default=["bounded", "default"], choices=["bounded", "default"],
                    help="CPU heaps to run every configuration under")
    ap.add_argument("--calibrate", action="store_true",
                    help="first run `shoestring plan --calibrate`'s probe (fp32 + bf16), so the step times are predicted "
                         "with this machine's utilisation measured right before")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(json.loads(args.child))), flush=True)
        return
    from shoestring.plan.hardware import load_hardware

    if args.calibrate:
        from shoestring.plan.calibrate import calibrate

        t_cal = time.perf_counter()
        cal = calibrate("full")
        print(f"calibration probes + probe shapes: {time.perf_counter() - t_cal:.1f} s "
              f"(shape timing {cal.get('shape_seconds')} s); shape model {cal.get('shape_model')}",
              file=sys.stderr, flush=True)
        probes = [(p["heap"], p["precision"], p["batch"], p["seq_len"], round(p["step_seconds"], 4)) for p in cal["probes"]]
        print(f"calibration: probes (heap, precision, batch, seq, s/step) {probes}; utilisation {cal['utilisation_by_dtype']}, "
              f"streaming B/s {cal['stream_rate_by_dtype']}, overhead {cal['framework_overhead_bytes'] / 2**20:.0f} MiB",
              file=sys.stderr, flush=True)
    hw = load_hardware()
    if args.rescore and hw.get("calibration", {}).get("probes"):
        from shoestring.plan.calibrate import rederive
        from shoestring.plan.hardware import save_hardware

        hw["calibration"] = rederive(hw)  # same measured probe times, current time model
        save_hardware(hw)
        print(f"calibration re-derived: utilisation {hw['calibration']['utilisation_by_dtype']}, streaming B/s "
              f"{hw['calibration']['stream_rate_by_dtype']}", file=sys.stderr)
    overhead = hw.get("calibration", {}).get("framework_overhead_bytes")
    root = Path(tempfile.mkdtemp(prefix="plan-acc-"))
    rows = []
    chosen = args.only if args.only else range(len(CONFIGS))
    if args.rescore:
        rows = json.loads(args.rescore.read_text())
        for r in rows:
            spec = dict(CONFIGS[r["i"]])
            spec["model"] = SMOL if spec.get("pretrained") else str(_model_folder(spec["base"], spec["over"], root))
            spec.update(dataset=str(_dataset(root, spec["task"] == "classification")), heap=r.get("heap", "bounded"),
                        fast_paths=r.get("fast_paths", True))
            spec["segments"], spec["record_lengths"] = _segments(spec), _record_lengths(spec)
            r["pred"] = predict(spec, overhead)
        chosen = []
    for i in chosen:
        spec = dict(CONFIGS[i])
        model = SMOL if spec.get("pretrained") else str(_model_folder(spec["base"], spec["over"], root))
        spec.update(model=model, fast_paths=not args.stock, dataset=str(_dataset(root, spec["task"] == "classification")))
        spec["segments"], spec["record_lengths"] = _segments(spec), _record_lengths(spec)
        shape_s = calibrate_row(spec) if args.calibrate else None
        for heap in args.heaps:
            spec.update(heap=heap, workspace=str(root / f"ws{i}-{heap}"))
            pred = predict(spec, overhead)
            pred["shape_calibration_seconds"] = shape_s
            t0 = time.time()
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True, env=env, timeout=900)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(f"[{i}] {spec['name']} ({heap}): FAILED\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            meas = json.loads(line[-1][7:])
            rows.append({"i": i, "name": spec["name"], "heap": heap, "fast_paths": spec["fast_paths"], "pred": pred,
                         "meas": meas, "wall": time.time() - t0})
            if args.json:  # after every row, so a run cut short keeps what it measured
                args.json.write_text(json.dumps(rows, indent=1))
            err = pred["peak_memory_bytes"] / meas["peak_memory_bytes"] - 1
            print(f"[{i}] {spec['name']} ({heap} heap): measured {meas['peak_memory_bytes'] / 2**20:.0f} MiB, predicted "
                  f"{pred['peak_memory_bytes'] / 2**20:.0f} MiB ({err:+.1%}); step {meas['step_seconds']:.3f}s vs "
                  f"{pred['step_seconds']:.3f}s ({pred['step_seconds'] / meas['step_seconds'] - 1:+.1%}); "
                  f"allocator {meas.get('cpu_allocator')}, fast paths {meas.get('fast_paths')}", file=sys.stderr,
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
