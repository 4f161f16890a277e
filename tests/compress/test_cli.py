"""End to end through the real CLI: compress (merge, int8, gate), then export to all formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real CLI subprocesses: ~4 model loads each

FAST = [
    "--eval-blocks",
    "2",
    "--eval-seq-len",
    "32",
    "--latency-tokens",
    "16",
    "--latency-runs",
    "1",
    "--gen-tokens",
    "2",
]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "shoestring.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def merged(adapter_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    r = _cli("compress", "--model", str(adapter_artifact), "--method", "merge", "-w", str(ws), *FAST, cwd=ws)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def test_merge_matches_adapter_and_is_a_full_model(merged: Path) -> None:
    rep = json.loads((merged / "compression_report.json").read_text())
    assert rep["merge_max_abs_logit_diff"] < 1e-3
    assert rep["kl_mean"] < 1e-6 and rep["gate"]["passed"]
    assert (merged / "model" / "model.safetensors").is_file() and (merged / "compression_report.html").is_file()
    man = json.loads((merged / "manifest.json").read_text())
    assert man["kind"] == "model" and man["task"] == "causal-lm"


def test_int8_then_export_all_formats(merged: Path, tmp_path: Path) -> None:
    r = _cli("compress", "--model", str(merged), "--method", "int8-dynamic", "-w", str(tmp_path), *FAST, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    q = Path(r.stdout.strip().splitlines()[-1])
    rep = json.loads((q / "compression_report.json").read_text())
    assert rep["size_ratio"] < 1.0 and rep["gate"]["passed"] and "speedup" in rep
    assert (q / "model" / "quantized.safetensors").is_file()
    r = _cli(
        "export", "--model", str(q), "--gguf-type", "f32", "--check-tokens", "6", "-w", str(tmp_path), cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip().splitlines()[-1])
    ex = json.loads((out / "export_report.json").read_text())
    assert ex["dequantized_from"] == "int8-dynamic"
    assert ex["hf"]["reload_max_abs_diff"] == 0.0
    assert ex["onnx"]["check"]["max_abs_diff"] < 1e-3
    assert ex["gguf"]["check"]["greedy_identical"]
    assert (out / "gguf" / "model-f32.gguf").is_file() and (out / "onnx" / "model.onnx").is_file()


def test_failed_gate_is_one_line_exit_2(merged: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("method: int4-weight\ngate: {max_kl: 0.0, max_ppl_increase_pct: null}\n")
    r = _cli("compress", "--model", str(merged), "--config", str(cfg), "-w", str(tmp_path), *FAST, cwd=tmp_path)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "KL divergence" in err[0] and "Traceback" not in r.stderr
    assert not list((tmp_path / "artifacts").glob("compress-*"))  # no artifact for a failed gate
    kept = list((tmp_path / "work").glob("compress-*/compression_report.html"))
    assert len(kept) == 1  # the report that explains the failure survives in the work folder


def test_merge_of_a_full_model_is_a_clear_error(merged: Path, tmp_path: Path) -> None:
    from shoestring.core.errors import ShoestringError
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace

    stage = get_stage("compress")
    cfg = stage.config(model=str(merged / "model"), method="merge")
    with pytest.raises(ShoestringError, match="needs a LoRA adapter"):
        Workspace(tmp_path).run(stage, cfg, {})
