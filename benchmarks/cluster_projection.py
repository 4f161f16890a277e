"""Paper-scale projection: what the planner predicts for 1, 2 and 8 nodes of 8×A100 / 8×H100.

Nothing here trains or measures: every figure is the planner's *prediction*, made by
:func:`shoestring.plan.cluster_plan.plan_for_nodes` on synthetic
:class:`~shoestring.core.cluster.Node` lists (8 GPUs each), exactly as ``plan --cluster`` would
plan a cluster reporting those nodes. Models are the published configs of SmolLM2-1.7B and
Llama-3-8B (hyper-parameters written below, no weights, no hub: the planner builds them on the
meta device); methods LoRA (rank 16, all linear layers but the head) and full fine-tuning, bf16
autocast, AdamW. Workload: ``--tokens`` training tokens at ``--seq-len``, a global batch of
``--batch`` sequences.

Each row is checked against published formulas:

* **ZeRO paper** (Rajbhandari et al. 2019, §3): per-GPU model states of mixed-precision Adam =
  2Ψ (fp16 weights) + 2Ψ (fp16 gradients) + KΨ (K = 12: fp32 master, momentum, variance), with
  the K·Ψ, then the gradients, then the weights divided by N_d at stages 1, 2, 3.
* **DeepSpeed's estimators** (``estimate_zero2_model_states_mem_needs``,
  ``estimate_zero3_model_states_mem_needs``, no offload): ZeRO-2 GPU = 4Ψ + 16Ψ/N;
  ZeRO-3 GPU = 4·largest layer + 18Ψ/N (:mod:`shoestring.plan.memory`).
* **6·N·D**: step seconds = 6 · parameters · tokens per step / (GPUs × peak × MFU), the
  catalogue's peak bf16 FLOP/s and utilisation (the planner adds attention, the LM head and
  communication; LoRA skips the frozen weights' gradients, about 4·N·D).

A first table reproduces the ZeRO paper's own example (Ψ = 7.5B, N_d = 64) through the
planner's memory function, once in the paper's layout (fp16 weights and gradients + fp32 master)
and once in the layout the trainer uses (bf16 autocast over fp32 weights and gradients).

Between nodes the planner costs traffic at ``--interconnect``: ``dgx`` (default) = one
InfiniBand NIC per GPU as in the DGX reference designs (200 Gbit/s HDR on A100, 400 Gbit/s NDR
on H100); a number = that many Gbit/s per GPU. The last column replans at the planner's own
cluster default (25 Gbit/s Ethernet) to show how much the network decides.

    python benchmarks/cluster_projection.py [--json out.json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

GB = 1e9
GiB = 1024**3
GPUS_PER_NODE = 8
NODE_COUNTS = (1, 2, 8)

# Published hyper-parameters (the models' config.json on the hub), written here: no download.
MODELS: dict[str, dict[str, Any]] = {
    "SmolLM2-1.7B": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 24, "hidden_size": 2048,
        "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rope_theta": 130000.0, "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
    },
    "Llama-3-8B": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
    },
}  # fmt: skip

GPUS = {"a100-80gb": ("A100-80G", 200.0), "h100-80gb": ("H100", 400.0)}
"""Catalogue GPU -> (Ray's accelerator_type the node reports, DGX per-GPU InfiniBand Gbit/s)."""


def synthetic_nodes(n: int, accelerator: str) -> list[Any]:
    """``n`` nodes of 8 GPUs, 96 CPUs and 1 TiB of RAM, as Ray would report them."""
    from shoestring.core.cluster import Node

    return [Node(f"node{i:02d}", f"node{i:02d}", f"10.0.0.{i + 1}", 96.0, float(GPUS_PER_NODE), 1024 * GiB, 0,
                 i == 0, accelerator) for i in range(n)]  # fmt: skip


def write_configs(root: Path) -> dict[str, Path]:
    """Each model's config.json in its own folder (what ``--model`` accepts)."""
    out = {}
    for name, cfg in MODELS.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(cfg))
        out[name] = d
    return out


def paper_example_rows() -> list[dict[str, Any]]:
    """The ZeRO paper's 7.5B / 64-GPU example through :func:`model_state_bytes` (GB = 1e9 bytes, as the paper)."""
    from shoestring.plan.arch import ModelShape
    from shoestring.plan.memory import TrainingSetup, model_state_bytes, zero_model_states_bytes

    psi, nd = 7_500_000_000, 64
    shape = ModelShape(model_type="paper", task="causal-lm", n_params=psi, n_embedding_params=0, n_layers=0,
                       hidden_size=0, n_heads=1, n_kv_heads=1, head_dim=0, intermediate_size=0, vocab_size=0,
                       tied_embeddings=False, max_positions=None)  # fmt: skip
    paper = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}  # the paper's printed figures (Fig. 1)
    rows = []
    for layout, precision in (("paper: fp16 weights + fp16 grads + fp32 master", "fp16"),
                              ("trainer: bf16 autocast over fp32 weights + grads", "bf16-mixed")):  # fmt: skip
        for stage, par in ((0, "ddp"), (1, "zero1"), (2, "zero2"), (3, "zero3")):
            s = TrainingSetup(
                method="full",
                precision=precision,  # type: ignore[arg-type]
                devices=nd,
                parallelism=par,  # type: ignore[arg-type]
                device_kind="cuda",
            )
            ours = sum(model_state_bytes(shape, s))
            rows.append(
                {
                    "layout": layout,
                    "zero_stage": stage,
                    "ours_gb": ours / GB,
                    "formula_gb": zero_model_states_bytes(psi, nd, stage) / GB,
                    "paper_printed_gb": paper[stage],
                }
            )
    return rows


def _largest_layer(shape: Any) -> int:
    """DeepSpeed's "largest layer": the biggest single module's parameters (embedding or head here)."""
    return max([shape.input_embedding_params, *(a * b for a, b in shape.linear_shapes.values())])


def check_columns(plan: dict[str, Any], shape: Any, nodes: int) -> dict[str, Any]:
    """Our model states beside the ZeRO formula and DeepSpeed's estimator; the 6·N·D step time."""
    from shoestring.plan.cluster_plan import ZERO_STAGE
    from shoestring.plan.memory import (
        deepspeed_zero2_model_states,
        deepspeed_zero3_model_states,
        zero_model_states_bytes,
    )

    terms = plan["predicted"]["memory_terms"]
    ours = terms["weights"] + terms["gradients"] + terms["optimizer_states"]
    par, gpus, psi = plan["parallelism"], plan["devices"], plan["parameters"]["total"]
    stage = ZERO_STAGE[par]
    out: dict[str, Any] = {"model_states_gib": ours / GiB, "zero_formula_gib": None, "deepspeed_gib": None}
    offload = par == "zero3-offload"
    if plan["method"] == "full":  # both formulas assume every weight trains; the paper's has no offload
        out["zero_formula_gib"] = None if offload else zero_model_states_bytes(psi, gpus, stage) / GiB
        if stage == 2:
            out["deepspeed_gib"] = deepspeed_zero2_model_states(psi, gpus_per_node=GPUS_PER_NODE, nodes=nodes)[1] / GiB
        elif stage == 3:
            out["deepspeed_gib"] = deepspeed_zero3_model_states(psi, _largest_layer(shape), gpus_per_node=GPUS_PER_NODE,
                                                                nodes=nodes, offload_optimizer=offload)[1] / GiB  # fmt: skip
    dev = plan["device"]
    tokens_per_step = plan["batch_size"] * plan["seq_len"]
    out["step_6nd_s"] = 6 * psi * tokens_per_step / (gpus * dev["peak_flops"] * dev["utilisation"])
    return out


def project(tokens: int, seq_len: int, batch: int, interconnect: str) -> list[dict[str, Any]]:
    """Plan every (model, method, GPU, node count) and return one row each."""
    from shoestring.core.config import parse_config
    from shoestring.plan.arch import describe_model, load_model_config
    from shoestring.plan.cluster_plan import NETWORK_GBPS, ZERO_STAGE, plan_for_nodes
    from shoestring.plan.planner import PlanConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_configs(Path(tmp))
        for model, folder in folders.items():
            shape = describe_model(load_model_config(str(folder / "config.json")), "causal-lm")
            for method in ("lora", "full"):
                for gpu, (accel, dgx_gbps) in GPUS.items():
                    for n in NODE_COUNTS:
                        body: dict[str, Any] = {"model": str(folder), "method": method, "dataset_tokens": tokens,
                                                "seq_len": seq_len, "batch_size": batch}  # fmt: skip
                        link = dgx_gbps if interconnect == "dgx" else float(interconnect)
                        nodes = synthetic_nodes(n, accel)
                        cfg = parse_config(
                            PlanConfig, {**body, **({"interconnect_gbps": link} if n > 1 else {})}, "proj"
                        )
                        plan = plan_for_nodes(cfg, nodes, fewest=False)
                        eth = None
                        if n > 1:  # the same job at the planner's default network between nodes
                            plain = plan_for_nodes(parse_config(PlanConfig, body, "proj"), nodes, fewest=False)
                            eth = {
                                "parallelism": plain["parallelism"],
                                "step_s": plain["predicted"]["step_seconds"],
                                "total_h": plain["predicted"]["total_seconds"] / 3600,
                                "gbps": NETWORK_GBPS,
                            }
                        p = plan["predicted"]
                        rows.append({
                            "model": model, "params": plan["parameters"]["total"],
                            "trainable": plan["parameters"]["trainable"], "method": method, "gpu": gpu, "nodes": n,
                            "gpus": plan["devices"], "fits": plan["fits"], "reason": plan["reason"],
                            "parallelism": plan["parallelism"], "zero_stage": ZERO_STAGE[plan["parallelism"]],
                            "micro_batch": plan["micro_batch_size"], "grad_accum": plan["grad_accum"],
                            "checkpointing": plan["activation_checkpointing"], "inter_node_gbps": link if n > 1 else None,
                            "peak_gib": p["peak_memory_bytes"] / GiB, "required_gib": p["required_bytes"] / GiB,
                            "usable_gib": plan["device"]["usable_bytes"] / GiB, "step_s": p["step_seconds"],
                            "steps": p["steps"], "total_h": p["total_seconds"] / 3600, "cost_usd": p["cost_usd"],
                            "usd_per_gpu_hour": plan["device"]["usd_per_hour"],
                            "peak_tflops": plan["device"]["peak_flops"] / 1e12, "mfu": plan["device"]["utilisation"],
                            **check_columns(plan, shape, n), "ethernet": eth,
                        })  # fmt: skip
                        print(f"  planned {model} {method} {gpu} x{n} node(s): {plan['parallelism']}", file=sys.stderr)
    return rows


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(rows: list[dict[str, Any]], paper: list[dict[str, Any]]) -> str:
    lines = ["| layout | ZeRO stage | ours (GB) | ZeRO formula (GB) | paper prints (GB) |", "|---|---|---|---|---|"]
    lines += [f"| {r['layout']} | {r['zero_stage']} | {r['ours_gb']:.1f} | {r['formula_gb']:.1f} | "
              f"{r['paper_printed_gb']:.1f} |" for r in paper]  # fmt: skip
    lines += ["", "| model | method | nodes × GPU | layout | per-GPU peak GiB | model states GiB (ours / ZeRO formula / "
              "DeepSpeed) | step s (6ND) | total h | cost $ | 25 GbE: layout, step s, total h |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        layout = (f"{r['parallelism']} (ZeRO-{r['zero_stage']}), mb {r['micro_batch']}×{r['grad_accum']}"
                  + (", ckpt" if r["checkpointing"] else ""))  # fmt: skip
        fit = "" if r["fits"] else " **does not fit**"
        eth = r["ethernet"]
        eth_s = "-" if eth is None else f"{eth['parallelism']}, {eth['step_s']:.1f}, {eth['total_h']:.1f}"
        cells = [r["model"], r["method"], f"{r['nodes']} × 8 {r['gpu']}", layout + fit, f"{r['peak_gib']:.1f}",
                 f"{r['model_states_gib']:.1f} / {_f(r['zero_formula_gib'])} / {_f(r['deepspeed_gib'])}",
                 f"{r['step_s']:.1f} ({r['step_6nd_s']:.1f})", f"{r['total_h']:.2f}", f"{r['cost_usd']:,.0f}", eth_s]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000_000, help="training tokens (one epoch)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512, help="global batch, sequences per optimizer step")
    ap.add_argument("--interconnect", default="dgx", help="between nodes: dgx or Gbit/s per GPU")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    paper = paper_example_rows()
    rows = project(args.tokens, args.seq_len, args.batch, args.interconnect)
    print(f"{args.tokens:,} tokens, seq_len {args.seq_len}, global batch {args.batch} sequences; "
          f"between nodes: {args.interconnect}")  # fmt: skip
    print(markdown(rows, paper))
    if args.json:
        settings = {"tokens": args.tokens, "seq_len": args.seq_len, "batch": args.batch,
                    "interconnect": args.interconnect}  # fmt: skip
        args.json.write_text(json.dumps({"settings": settings, "paper_example": paper, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
