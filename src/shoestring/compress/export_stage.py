"""`shoestring export`: a model to a Hugging Face folder, ONNX and GGUF, each checked.

* ``hf`` -> ``model/`` (safetensors + tokenizer): reloaded and compared with the source;
  the artifact is a model artifact, so evaluate and serve accept it directly.
* ``onnx`` -> ``onnx/model.onnx`` (+ tokenizer): onnxruntime vs PyTorch, max |diff| gated
  by ``onnx_tolerance``.
* ``gguf`` -> ``gguf/model-<type>.gguf``: llama-cpp-python loads it; its greedy tokens for
  ``check_prompt`` must equal PyTorch's (weights rounded through the same type).

A quantised source (from ``shoestring compress``) is dequantised first: the exported
float weights are exactly its int8/int4 grid values, so the export reproduces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from shoestring.core.config import ArtifactInput, StageConfig

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.workspace import StageContext

__all__ = ["CONFIG", "KIND", "SCHEMA_VERSION", "SUMMARY", "ExportConfig", "build", "summarize"]

KIND = "model"
SCHEMA_VERSION = 1
SUMMARY = "Export a model to a Hugging Face folder, ONNX (checked with onnxruntime) and GGUF (checked with llama.cpp)."


class ExportConfig(StageConfig):
    """Which formats to write and how strictly to check them."""

    model: Annotated[str, ArtifactInput("model", external_ok=True)]
    """Model to export: a model artifact (incl. compressed or LoRA adapter), packaged name, folder, .gguf or hub id."""
    formats: list[Literal["hf", "onnx", "gguf"]] = Field(["hf", "onnx", "gguf"], min_length=1)
    """Formats to write: hf, onnx, gguf."""
    task: Literal["causal-lm", "masked-lm", "classification", "embedding"] | None = None
    """Model head; default: the source artifact's task, else causal-lm."""
    gguf_type: Literal["f32", "f16", "q8_0"] = "f16"
    """GGUF weight type for 2-D tensors (norms stay f32)."""
    onnx_exporter: Literal["torchscript", "dynamo"] = "torchscript"
    """torch.onnx exporter: torchscript (fast, mature) or dynamo (torch.export based)."""
    onnx_opset: int = Field(17, ge=13)
    """ONNX opset for the torchscript exporter."""
    onnx_tolerance: float = Field(1e-3, gt=0.0)
    """Largest allowed max |onnxruntime - PyTorch| on the outputs (logits or hidden states)."""
    check: bool = True
    """Run the checks (onnxruntime, llama-cpp-python); off = write only."""
    check_prompt: str = "The three primary colours are red, yellow and"
    """Prompt for the GGUF greedy-token comparison."""
    check_tokens: int = Field(16, ge=1)
    """Greedy tokens compared between llama.cpp and PyTorch."""
    gguf_require_identical: bool = True
    """Fail the export when llama.cpp's greedy tokens differ from PyTorch's."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch and llama.cpp (default: their defaults)."""


CONFIG = ExportConfig


def _load_float_model(cfg: ExportConfig, ctx: StageContext) -> tuple[Any, Any, str, dict[str, Any]]:
    from shoestring.compress.modelio import load_compressed
    from shoestring.compress.quant import dequantize_model
    from shoestring.models import HF_TASKS, load_tokenizer, normalize_task
    from shoestring.models.packaged import packaged_model
    from shoestring.models.quantized import QuantSpec, is_quantized, model_folder, model_task

    art = ctx.inputs.get("model")
    spec = str(art.path) if art is not None else cfg.model
    task: str
    if cfg.task:
        task = cfg.task
    elif art is not None:
        task = model_task(art.path)
    else:
        pm = packaged_model(cfg.model)
        task = normalize_task(pm.task if pm else None, allowed=HF_TASKS, who="export")
    info: dict[str, Any] = {}
    model = load_compressed(spec, task)
    if is_quantized(spec):
        info["dequantized_from"] = QuantSpec.read(model_folder(spec)).method
        info["dequantized_layers"] = dequantize_model(model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # type: ignore[operator]
        info["merged_adapter"] = True
    model.eval()
    return model, load_tokenizer(spec), task, info


def build(cfg: ExportConfig, ctx: StageContext) -> dict[str, Any]:
    import torch

    from shoestring.compress.modelio import load_compressed, save_model_folder
    from shoestring.core.artifact import atomic_write_json
    from shoestring.core.errors import ShoestringError

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    say = ctx.console.print
    model: Any
    model, tokenizer, task, report = _load_float_model(cfg, ctx)
    report["task"] = task
    formats = list(dict.fromkeys(cfg.formats))
    if "hf" in formats:
        folder = ctx.out_dir / "model"
        save_model_folder(model, tokenizer, folder, task)
        back = load_compressed(folder, task)
        probe = torch.randint(3, min(1000, int(model.config.vocab_size)), (1, 16))
        with torch.inference_mode():
            a, b = model(input_ids=probe), back(input_ids=probe)
            diff = float((a[0].float() - b[0].float()).abs().max())
        report["hf"] = {
            "path": "model/",
            "bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
            "reload_max_abs_diff": diff,
        }
        del back
        if diff > 0.0:
            raise ShoestringError(f"HF export does not reload exactly (max |diff| {diff:.3g}); report this as a bug")
        say(f"hf: model/ written, reloads exactly ({report['hf']['bytes'] / 1e6:.1f} MB)")
    if "onnx" in formats:
        from shoestring.compress.onnx_export import check_with_onnxruntime, write_onnx

        (ctx.out_dir / "onnx").mkdir()
        path = ctx.out_dir / "onnx" / "model.onnx"
        info = write_onnx(model, path, task, exporter=cfg.onnx_exporter, opset=cfg.onnx_opset)
        if tokenizer is not None:
            tokenizer.save_pretrained(ctx.out_dir / "onnx")
        if cfg.check:
            info["check"] = check_with_onnxruntime(model, path, task, int(model.config.vocab_size))
            d = info["check"]["max_abs_diff"]
            if d > cfg.onnx_tolerance:
                raise ShoestringError(
                    f"ONNX outputs differ from PyTorch by {d:.3g} (> onnx_tolerance {cfg.onnx_tolerance:g}); "
                    "try onnx_exporter: dynamo, or raise onnx_tolerance if the difference is acceptable"
                )
            say(f"onnx: onnxruntime matches PyTorch (max |diff| {d:.2e})")
        report["onnx"] = {"path": "onnx/model.onnx", **info}
    if "gguf" in formats:
        from shoestring.compress.gguf_export import check_with_llama_cpp, write_gguf

        if task != "causal-lm":
            raise ShoestringError(f"GGUF export is for causal LMs (Llama architecture), not task '{task}'; drop gguf")
        (ctx.out_dir / "gguf").mkdir()
        path = ctx.out_dir / "gguf" / f"model-{cfg.gguf_type}.gguf"
        info = write_gguf(model, tokenizer, path, cfg.gguf_type, name=cfg.model)
        if cfg.check:
            info["check"] = check_with_llama_cpp(
                model, tokenizer, path, cfg.gguf_type, cfg.check_prompt, cfg.check_tokens, cfg.threads
            )
            chk = info["check"]
            if not chk["greedy_identical"] and cfg.gguf_require_identical:
                raise ShoestringError(
                    f"llama.cpp greedy tokens differ from PyTorch's after {chk['matched_prefix']} of "
                    f"{cfg.check_tokens} tokens (GGUF {cfg.gguf_type}); try gguf_type f32, or set "
                    "gguf_require_identical: false"
                )
            say(
                f"gguf: llama.cpp greedy tokens {'match' if chk['greedy_identical'] else 'DIFFER from'} PyTorch "
                f"({chk['matched_prefix']}/{cfg.check_tokens}); max |logit diff| {chk['max_abs_logit_diff']:.3g}"
            )
        report["gguf"] = {"path": f"gguf/{path.name}", **info}
    atomic_write_json(ctx.out_dir / "export_report.json", report)
    ctx.extra_manifest["task"] = task
    ctx.extra_manifest["export"] = {"formats": formats, "source": cfg.model}
    stats: dict[str, Any] = {"formats": formats}
    if "onnx" in report and "check" in report["onnx"]:
        stats["onnx_max_abs_diff"] = report["onnx"]["check"]["max_abs_diff"]
    if "gguf" in report:
        stats["gguf_bytes"] = report["gguf"]["bytes"]
        if "check" in report["gguf"]:
            stats["gguf_greedy_identical"] = report["gguf"]["check"]["greedy_identical"]
    return stats


def summarize(artifact: Artifact, console: Console) -> None:
    """One line per exported format with its check result."""
    import json

    rep = json.loads(artifact.file("export_report.json").read_text())
    if "hf" in rep:
        console.print(f"hf    {rep['hf']['path']:<28} {rep['hf']['bytes'] / 1e6:8.1f} MB  reload exact")
    if "onnx" in rep:
        chk = rep["onnx"].get("check", {})
        note = f"max |diff| vs PyTorch {chk['max_abs_diff']:.2e}" if chk else "unchecked"
        console.print(f"onnx  {rep['onnx']['path']:<28} {rep['onnx']['bytes'] / 1e6:8.1f} MB  {note}")
    if "gguf" in rep:
        chk = rep["gguf"].get("check", {})
        note = (
            f"llama.cpp greedy {'identical' if chk['greedy_identical'] else 'DIFFERENT'} "
            f"({chk['matched_prefix']} tokens)"
            if chk
            else "unchecked"
        )
        console.print(f"gguf  {rep['gguf']['path']:<28} {rep['gguf']['bytes'] / 1e6:8.1f} MB  {note}")
