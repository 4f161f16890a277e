"""The quickstart's curate stage on the project's own messy example data (the real stage, real files)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shoestring.core.config import load_yaml, parse_config
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.(?:com|net|org)\b")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the quickstart curate stage once (in-process, serial) and return the artifact folder."""
    stage = get_stage("curate")
    data = load_yaml(ROOT / "examples/quickstart/curate.yaml")
    data["workers"] = 1
    cwd = os.getcwd()
    os.chdir(ROOT)  # the example's paths are relative to the repo root
    try:
        cfg = parse_config(stage.config, data, "curate.yaml")
        res = Workspace(tmp_path_factory.mktemp("ws")).run(stage, cfg)
    finally:
        os.chdir(cwd)
    return res.artifact.path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_record_is_accounted_for(quickstart: Path) -> None:
    stats = json.loads((quickstart / "manifest.json").read_text())["stats"]
    dropped = sum(n for reasons in stats["dropped_by"].values() for n in reasons.values())
    assert stats["read"] == stats["kept"] + dropped + stats["quarantined"]
    assert stats["dropped"] == dropped
    # The generator planted all of these defects; each must show up under its own reason.
    assert stats["dropped_by"]["dedup"]["exact_duplicate"] >= 40
    assert stats["dropped_by"]["dedup"]["near_duplicate"] >= 50
    assert stats["dropped_by"]["quality"]["too_short"] >= 4
    assert stats["quarantine_reasons"]["bad_json"] >= 1
    assert any(r.startswith("wrong_type:") for r in stats["quarantine_reasons"])
    quarantine = _rows(quickstart / "quarantine.jsonl")
    assert len(quarantine) == stats["quarantined"]
    assert all(q["source"] and q["location"] and q["reason"] for q in quarantine)


def test_records_follow_the_dataset_contract(quickstart: Path) -> None:
    ids: set[str] = set()
    for split in ("train", "validation", "test"):
        rows = _rows(quickstart / f"{split}.jsonl")
        assert rows, split
        for r in rows:
            assert isinstance(r["id"], str) and isinstance(r["text"], str)
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
            assert r["messages"][1]["content"] == r["response"]
            assert not any(k.startswith("_") for k in r)
            ids.add(r["id"])
    stats = json.loads((quickstart / "manifest.json").read_text())["stats"]
    assert len(ids) == stats["kept"]
    # Splits are exact over leak units; a unit joined from several clusters (pairs whose estimate
    # reaches 0.8 while their exact Jaccard does not) holds more than one kept record.
    joined = stats["leak_check"]["near_pairs_joined_before_split"]
    for split in ("validation", "test"):
        assert abs(stats["splits"][split] - round(stats["kept"] * 0.1)) <= joined


def test_no_raw_pii_mojibake_or_html_survives(quickstart: Path) -> None:
    text = "".join((quickstart / f"{s}.jsonl").read_text(encoding="utf-8") for s in ("train", "validation", "test"))
    assert not EMAIL.search(text)
    assert "+44 20 7946" not in text and "(555) 013-" not in text
    assert "Ã" not in text and "â€" not in text
    assert "<p>" not in text and "&amp;" not in text
    assert "user-" in text and "@example.invalid" in text  # pseudonyms replaced the addresses
    assert "café" in text  # the cp1252 line was decoded, not lost


def test_data_card_reports_counts_never_values(quickstart: Path) -> None:
    card = json.loads((quickstart / "datacard.json").read_text())
    assert card["pii"]["email"] > 50 and card["pii"]["phone"] > 50
    assert set(card["sources"]) == {"tickets", "faq", "kb"}
    assert sum(s["read"] for s in card["sources"].values()) == card["accounting"]["read"]
    assert card["leak_check"]["cross_split_pairs"] == 0
    assert card["duplicate_clusters"] and card["duplicate_clusters"][0]["size"] >= 2
    page = (quickstart / "datacard.html").read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert not EMAIL.search(page)


def test_cli_runs_the_quickstart_config(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoestring.cli",
            "curate",
            "--config",
            "examples/quickstart/curate.yaml",
            "-w",
            str(tmp_path),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    art = Path(p.stdout.strip().splitlines()[-1])
    assert (art / "train.jsonl").is_file()
    assert "read 1021 = kept" in p.stdout
