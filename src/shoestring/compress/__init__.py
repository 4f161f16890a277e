"""Compression and export: quantisation, structured pruning, distillation, LoRA merge;
HF / ONNX / GGUF export. Each result is measured against its parent."""

from shoestring.compress.modelio import load_compressed, save_model_folder
from shoestring.compress.quant import QUANT_METHODS, QuantSpec, dequantize_model, quantize_model
from shoestring.compress.regression import GateConfig, check_gate, measure_pair

__all__ = [
    "QUANT_METHODS",
    "GateConfig",
    "QuantSpec",
    "check_gate",
    "dequantize_model",
    "load_compressed",
    "measure_pair",
    "quantize_model",
    "save_model_folder",
]
