"""Helpers of the dashboard tests: the tiny recipe, and `shoestring ui` started as a user starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PORTS = range(18150, 18199)


def cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def tiny_recipe(path: Path, ws: Path, model: Path, *, train_steps: int = 6, name: str = "tiny") -> Path:
    """The quickstart's shape on the quickstart's tickets (with their planted defects) and a tiny model."""
    path.write_text(f"""name: {name}
description: tickets -> curate -> plan -> LoRA SFT of a 2-layer Llama -> evaluate -> assess (test recipe)
workspace: {ws}
stages:
  data:
    stage: curate
    sources:
      - path: {ROOT / 'examples/quickstart/tickets.jsonl'}
        name: tickets
        fields: {{id: ticket_id, instruction: question, response: answer}}
        fallback_encoding: cp1252
    quality: {{min_words: 12, min_stop_words: 2, max_digit_ratio: 0.3}}
    pii: {{mode: pseudonym}}
    split: {{validation: 0.1, test: 0.1, seed: 0}}
    workers: 1
  budget:
    stage: plan
    dataset: data
    model: {model}
    task: sft
    seq_len: 64
    batch_size: 4
  train:
    dataset: data
    plan: budget
    model: {model}
    task: sft
    max_steps: {train_steps}
    val_max_examples: 4
    checkpoint_every: 3
    progress: false
  evaluate:
    model: train
    compare: {model}
    dataset: data
    task: sft
    max_records: 8
    max_new_tokens: 4
    bootstrap: 100
    explain: 0
    prompts: ["How do I cancel my cloud storage plan?"]
  assess:
    dataset: data
    plan: budget
    model: train
    devices: [l4-24gb]
""")
    return path


@dataclass(frozen=True)
class TinyRun:
    root: Path
    """The folder the recipe ran in (and the dashboard serves)."""
    ws: Path
    recipe: Path
    model: Path
    seconds: float


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18150-18198")


@dataclass(frozen=True)
class Server:
    url: str
    proc: subprocess.Popen[str]


def start_ui(root: Path, *extra: str) -> Server:
    """`shoestring ui` as a user starts it, in ``root``; waits until /health answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "shoestring.cli", "ui", "--port", str(port), *extra], cwd=root,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"shoestring ui exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return Server(url, proc)
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("shoestring ui did not answer /health within 60 s")
