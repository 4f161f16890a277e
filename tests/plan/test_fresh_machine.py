"""A new user's first plan on a fresh machine, then a real training run: the plan must hold.

An empty shoestring cache (only the converted packaged models are shared), the real CLI:
`shoestring plan` calibrates this machine on first use and runs the planned model's twins;
`shoestring train` follows the plan in a fresh process. The plan's headline (resident peak,
what `top` shows; wall seconds per step) must be within the README's cold tolerances of what
the run measured (±15% and ±25%). Then the run's residual feeds back: the same job planned
again is corrected toward what was measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RESIDENT_TOLERANCE = 0.15
STEP_TOLERANCE = 0.25


def _model(root: Path) -> Path:
    """An 8-block, 256-wide Llama config with SmolLM2's real tokenizer (49k vocabulary): built
    from its config by the trainer, like a pretraining run."""
    from shoestring.models.loading import hf_folder

    src = Path(hf_folder("smollm2-135m-instruct"))
    dst = root / "llama-8x256"
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")) and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(num_hidden_layers=8, hidden_size=256, intermediate_size=688, num_attention_heads=4,
               num_key_value_heads=2, head_dim=64)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _dataset(root: Path) -> Path:
    """A dataset artifact of 160 support-style chats (as curate writes it)."""
    d = root / "chats"
    d.mkdir()
    topics = ["restore a deleted file", "exclude a folder from backups", "cancel the storage plan",
              "change the backup schedule", "encrypt the archive", "move backups to a new disk"]
    lines = []
    for i in range(160):
        t = topics[i % len(topics)]
        answer = " ".join(f"Step {k + 1}: open the settings, choose {t.split()[0]}, and confirm item {i}." for k in
                          range(1 + i % 5))
        lines.append(json.dumps({"id": str(i), "messages": [{"role": "user", "content": f"How do I {t}? ({i})"},
                                                             {"role": "assistant", "content": answer}]}))
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    (d / "validation.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (d / "manifest.json").write_text(json.dumps({"kind": "dataset", "hash": "e" * 64, "stats": {}}))
    return d


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "shoestring.cli", *args], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _trial(root: Path) -> dict:
    """One independent trial: a fresh cache and workspace, the first plan, then the real run."""
    from shoestring.models.loading import cache_dir

    root.mkdir()
    cache = root / "fresh-cache"
    cache.mkdir()
    (cache / "models").symlink_to((cache_dir() / "models").resolve())  # the packaged models, converted once
    env = {**os.environ, "SHOESTRING_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    model, data, ws = _model(root), _dataset(root), root / "ws"
    plan_args = ["plan", "--model", str(model), "--dataset", str(data), "--task", "sft", "--method", "lora",
                 "--seq-len", "128", "--batch-size", "4", "--micro-batch-size", "4", "--explain", "-w", str(ws)]
    first = _run(plan_args, env)
    assert "calibrating this machine: this machine has not been calibrated" in first.stderr
    assert "resident peak" in first.stdout and "How the plan was obtained" in first.stdout
    plan_dir = Path(first.stdout.strip().splitlines()[-1])
    plan = json.loads((plan_dir / "plan.json").read_text())
    assert plan["calibration"]["state"] == "fresh" and plan["calibration"]["seconds_now"] < 120
    assert plan["twins"]["measured_now"] and plan["twins"]["depths"] == [2, 8]  # cheap: the model itself
    terms = {row["term"] for row in plan["explain"]}
    assert {"library residency", "timed calls", "the twins' measured blocks"} <= terms

    _run(["train", "--dataset", str(data), "--plan", str(plan_dir), "--model", str(model), "--from-scratch",
          "--max-steps", "16", "--val-max-examples", "0", "--no-progress", "-w", str(ws)], env)
    out = (ws / "last-train").resolve()
    comp = json.loads((out / "manifest.json").read_text())["plan_comparison"]
    assert comp["deviations"] == []
    steps = [r["step_seconds"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "step_seconds" in r]
    # What a failure message needs to tell a loaded machine from a wrong plan: both sides' step times.
    seen = {"errors": comp["errors"], "planned_step": comp["predicted"].get("step_seconds"),
            "measured_step": comp["measured"]["step_seconds"], "run_steps": steps,
            "twin_steps": plan["twins"]["step_seconds"], "load_after": os.getloadavg()}
    return {"plan_args": plan_args, "env": env, "cache": cache, "comp": comp, "seen": seen}


def _holds(trial: dict) -> bool:
    err = trial["comp"]["errors"]
    return abs(err["resident_peak_bytes"]) <= RESIDENT_TOLERANCE and abs(err["step_seconds"]) <= STEP_TOLERANCE


def test_first_plan_on_a_fresh_machine_holds_for_a_real_run(tmp_path: Path) -> None:
    # Wall-clock steps on a shared 2-core machine: another process's burst during the plan's twins
    # or the run moves one side (CI: +45% once, the twins slowed). A miss is re-measured once, from
    # scratch, before it fails; both trials' figures are in the failure message.
    trials = [_trial(tmp_path / "trial-1")]
    if not _holds(trials[0]):
        trials.append(_trial(tmp_path / "trial-2"))
    passing = [t for t in trials if _holds(t)]
    assert passing, [t["seen"] for t in trials]
    trial = passing[0]
    comp, cache, env, plan_args = trial["comp"], trial["cache"], trial["env"], trial["plan_args"]

    # The run fed its residual back: the same job planned again is corrected toward it.
    runs = list((cache / "runs").glob("*.jsonl"))
    assert len(runs) == 1 and len(runs[0].read_text().splitlines()) == 1
    again = json.loads((Path(_run([*plan_args, "--force"], env).stdout.strip().splitlines()[-1]) / "plan.json")
                       .read_text())
    assert not again["twins"]["measured_now"]  # cached with the calibration
    warm = again["predicted"]["resident_peak_bytes"] / comp["measured"]["resident_peak_bytes"] - 1
    assert abs(warm) <= 0.02  # the same job's memory ratio is taken whole (deterministic)
    assert again["feedback"]["memory_how"].startswith("x") and "same job" in again["feedback"]["memory_how"]
