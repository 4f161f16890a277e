"""Model pages on artifacts written by hand: a compression gate's pass/fail per threshold, export
checks, and an evaluation's fairness tables and intervals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shoestring.ui.app import create_app
from shoestring.ui.config import UiConfig
from shoestring.ui.store import Store


def _artifact(ws: Path, name: str, manifest: dict, files: dict[str, object]) -> None:
    d = ws / "artifacts" / name
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"hash": name.split("-")[1] * 4, "timings": {}, "inputs": {}, **manifest}))
    for fname, body in files.items():
        (d / fname).write_text(json.dumps(body))


@pytest.fixture
def client(tmp_path: Path) -> tuple[TestClient, str]:
    ws = tmp_path / ".shoestring" / "ws"
    _artifact(ws, "compress-aaaa", {"kind": "model", "stage": "compress", "stats": {"gate_passed": False,
                                                                                   "method": "int8-weight"}},
              {"compression_report.json": {
                  "method": "int8-weight", "parent_weight_bytes": 5e8, "child_weight_bytes": 2e8, "parent_ppl": 12.0,
                  "child_ppl": 12.1, "kl_mean": 0.01, "speedup": 0.7, "size_ratio": 0.4,
                  "gate": {"max_kl": 0.05, "min_speedup": 0.8, "max_size_ratio": 0.5, "max_ppl_increase_pct": None,
                           "action": "warn", "passed": False, "failures": ["speedup 0.7 < 0.8"]}}})
    _artifact(ws, "export-bbbb", {"kind": "model", "stage": "export", "stats": {}}, {"export_report.json": {
        "hf": {"bytes": 5e8, "reload_max_abs_diff": 0.0},
        "onnx": {"path": "onnx/model.onnx", "bytes": 6e8, "check": {"max_abs_diff": 6.6e-5}},
        "gguf": {"path": "gguf/model-f16.gguf", "bytes": 3e8, "check": {"greedy_identical": True}}}})
    iv = {"value": 0.91, "low": 0.88, "high": 0.94, "confidence": 0.95, "n": 200}
    _artifact(ws, "evaluate-cccc", {"kind": "evaluation", "stage": "evaluate", "stats": {}}, {"metrics.json": {
        "task": "classification", "model": {"spec": "m", "accuracy": iv, "records": 200},
        "fairness": {"gender": {"overall": {"selection_rate": 0.5, "accuracy": 0.9, "count": 200},
                                "groups": {"f": {"selection_rate": 0.45, "accuracy": 0.93, "count": 90},
                                           "m": {"selection_rate": 0.55, "accuracy": 0.88, "count": 110}},
                                "difference": {"selection_rate": 0.1}, "ratio": {"selection_rate": 0.82},
                                "demographic_parity_difference": 0.1,
                                "mitigation": {"rows": [{"method": "ThresholdOptimizer", "accuracy": 0.89,
                                                         "demographic_parity_difference": 0.02,
                                                         "equalized_odds_difference": 0.04}]}}},
        "explanations": {"model": [{"text": "great product", "method": "shap", "relative_gap": 0.01, "met": True}]}}})
    ws_id = Store([".shoestring"], base=tmp_path).workspace_of(ws).id
    return TestClient(create_app(UiConfig(cwd=str(tmp_path))), base_url="http://127.0.0.1:8600"), ws_id


def _row(page: str, first_cell: str) -> list[str]:
    m = re.search(rf"<tr><td>{re.escape(first_cell)}</td>(.*?)</tr>", page)
    assert m, first_cell
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", m.group(1))]


def test_each_gate_threshold_shows_pass_or_fail(client: tuple[TestClient, str]) -> None:
    c, ws = client
    page = c.get(f"/ws/{ws}/a/compress-aaaa").text
    assert "FAIL" in page and "speedup 0.7 &lt; 0.8" in page
    assert _row(page, "kl_mean") == ["&lt;= 0.05", "0.01", "pass"]
    assert _row(page, "speedup") == ["&gt;= 0.8", "0.7", "fail"]
    assert _row(page, "size_ratio") == ["&lt;= 0.5", "0.4", "pass"]
    assert "ppl_increase_pct" not in page.split('id="gate"')[1].split("</table>")[0]  # unset threshold: no row


def test_exports_show_their_checks(client: tuple[TestClient, str]) -> None:
    c, ws = client
    page = c.get(f"/ws/{ws}/a/export-bbbb").text
    assert _row(page, "onnx")[2] == "max_abs_diff 6.6e-05"
    assert _row(page, "gguf")[2] == "greedy_identical true"


def test_evaluation_shows_intervals_fairness_and_explanations(client: tuple[TestClient, str]) -> None:
    c, ws = client
    page = c.get(f"/ws/{ws}/a/evaluate-cccc").text
    assert "0.91 [0.88, 0.94]" in page
    assert _row(page, "f")[0] == "0.45" and _row(page, "m")[-1] == "110"
    assert "ThresholdOptimizer" in page and "demographic parity difference" in page
    assert _row(page, "model")[0:3] == ["great product", "shap", "0.01"]
