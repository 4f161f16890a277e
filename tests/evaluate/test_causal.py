"""Causal-LM evaluation: assistant-only loss, before/after comparison, report and drift reference."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoestring.core.errors import ShoestringError
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.evaluate.lm import IGNORE_INDEX, tokenize_for_loss


def test_chat_loss_scores_only_assistant_tokens(tiny_lm: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    rec = {"id": "a", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": "Madrid."},
    ]}
    it = tokenize_for_loss(tok, rec, 256)
    assert it is not None
    scored = [t for t, lab in zip(it.input_ids, it.labels, strict=True) if lab != IGNORE_INDEX]
    # Both replies with their end-of-turn markers, nothing from system or user turns.
    assert tok.decode(scored) == "Paris.<|im_end|>\nMadrid.<|im_end|>\n"
    plain = tokenize_for_loss(tok, {"id": "b", "text": "just some text"}, 256)
    assert plain is not None and plain.labels == plain.input_ids
    assert tokenize_for_loss(tok, {"id": "c", "text": "  "}, 256) is None


def _run(tmp_path: Path, **cfg: object):
    stage = get_stage("evaluate")
    conf = stage.config.model_validate(cfg)
    from shoestring.core.artifact import Artifact

    inputs = {k: Artifact.load(v) for k, v in cfg.items() if k in ("model", "compare", "dataset")
              and isinstance(v, str) and (Path(v) / "manifest.json").is_file()}
    return Workspace(tmp_path / "ws").run(stage, conf, inputs)


def test_lora_vs_base_paired_comparison(tmp_path: Path, tiny_lm: Path, lora_artifact: Path, chat_dataset: Path) -> None:
    res = _run(
        tmp_path, model=str(lora_artifact), compare=str(tiny_lm), dataset=str(chat_dataset),
        prompts=["What do bees make?"], max_new_tokens=6, bootstrap=200, explain=1, ig_steps=8, ig_max_steps=64,
    )
    art = res.artifact
    assert art.kind == "evaluation" and art.manifest["task"] == "causal-lm"
    m = json.loads((art.path / "metrics.json").read_text())
    assert m["records_read"] == 8 and m["records_malformed"] == {"malformed_json": 1}
    lo, base = m["model"]["loss"], m["compare"]["loss"]
    assert lo["low"] <= lo["value"] <= lo["high"]
    assert math.isclose(m["model"]["perplexity"]["value"], math.exp(lo["value"]), rel_tol=1e-9)
    # The adapter was trained on these replies, so it must beat its base clearly.
    assert lo["value"] < base["value"] - 0.5
    comp = m["comparison"]
    assert comp["same_tokenization"] and comp["a_better"] == 8
    assert comp["difference"]["high"] < 0 and comp["verdict"] == "model is better"
    # 8 records all in one direction: exact sign-flip p is 2/256, Monte-Carlo estimate near it.
    assert comp["p_value_permutation"] < 0.02 and comp["significant"]
    assert math.isclose(comp["difference"]["value"], lo["value"] - base["value"], rel_tol=1e-6)
    gens = m["generations"]
    assert [g["mode"] for g in gens] == ["greedy", "sampled"] and "compare" in gens[0]
    ex = m["explanations"]["model"][0]
    assert math.isclose(sum(ex["scores"]) + ex["gap"] * 0, ex["f_x"] - ex["f_baseline"], abs_tol=max(ex["gap"], 1e-6) * 1.01)

    ref = json.loads((art.path / "reference.json").read_text())
    assert ref["version"] == 1
    feat = ref["features"]["input_tokens"]
    assert feat["kind"] == "numeric" and len(feat["edges"]) == len(feat["proportions"]) + 1
    assert feat["edges"] == sorted(feat["edges"]) and all(math.isfinite(e) for e in feat["edges"])
    assert math.isclose(sum(feat["proportions"]), 1.0)
    assert set(ref["predictions"]) == {"output_tokens", "loss"} and "input_chars" in ref["features"]
    # The server's own reader (serve helper) must accept it.
    drift = pytest.importorskip("shoestring.serve.drift")
    assert "prediction_output_tokens" in drift.load_reference(art.path)
    html = (art.path / "report.html").read_text()
    assert "data:image/png;base64," in html and "Paired comparison" in html and "Integrated Gradients" in html
    assert "<script" not in html and 'src="http' not in html
    assert (art.path / "generations.jsonl").read_text().count("\n") == 2


def test_unknown_task_and_empty_input_are_one_line(tmp_path: Path, tiny_lm: Path) -> None:
    with pytest.raises(ShoestringError, match="nothing to evaluate"):
        _run(tmp_path, model=str(tiny_lm))


@pytest.mark.slow
def test_cli_evaluate_end_to_end(tmp_path: Path, lora_artifact: Path, tiny_lm: Path, chat_dataset: Path) -> None:
    cmd = [sys.executable, "-m", "shoestring.cli", "evaluate", "--model", str(lora_artifact), "--compare", str(tiny_lm),
           "--dataset", str(chat_dataset), "--prompts", "Say hello.", "--max-new-tokens", "4", "--bootstrap", "200",
           "--explain", "0", "--no-sampled", "--workspace", str(tmp_path / "ws")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest.one_torch_thread
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    art = Path(out.stdout.strip().splitlines()[-1])
    assert (art / "report.html").is_file() and "model is better" in out.stdout
    bad = subprocess.run([*cmd[:4], "--model", str(tiny_lm), "--task", "nonsense", "--workspace", str(tmp_path / "w2")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
