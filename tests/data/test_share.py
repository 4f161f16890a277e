"""curate's shareable release: identifiers removed or pseudonymised, k-anonymity enforced on the
quasi-identifiers, Laplace-noised counts, a machine-readable report; a residual PII hit fails in one line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from shoestring.core.artifact import Artifact
from shoestring.core.config import parse_config
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.data.config import CurateConfig

KEY = "a-secret-key-for-tests-0123456789"


def _source(path: Path, n: int = 300) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        age = rng.choice([23, 27, 34, 38, 45, 47, 52, 91])  # one 91-year-old at most: a unique class
        if age == 91 and any(r["age"] == 91 for r in rows):
            age = 45
        rows.append({
            "id": f"u{i}", "user_id": f"user-{i % 60}", "name": f"Person {i}", "age": age,
            "zip": rng.choice(["02139", "02141", "10001", "10003"]), "gender": rng.choice(["f", "m"]),
            "text": f"Ticket {i}: my backup to the vault fails, mail me at person{i}@example.com about restore {i}",
        })  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(src: Path, pii: bool) -> dict:  # type: ignore[type-arg]
    return {
        "sources": [{"path": str(src), "name": "tickets"}], "workers": 1,
        "quality": {"enabled": False}, "dedup": {"exact": False, "near": False},
        "pii": {"enabled": pii, "mode": "pseudonym"},
        "share": {"enabled": True, "drop_columns": ["name"], "pseudonymise_columns": ["user_id"],
                  "quasi_identifiers": ["age", "zip", "gender"], "generalise": {"age": {"bin": 10}, "zip": {"prefix": 3}}, "k": 5,
                  "count_columns": ["gender"], "epsilon": 2.0},
    }  # fmt: skip


def test_share_release_is_k_anonymous_pseudonymised_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOESTRING_PII_KEY", KEY)
    src = _source(tmp_path / "tickets.jsonl")
    cfg = parse_config(CurateConfig, _config(src, pii=True), "test")
    art = Workspace(tmp_path / "ws").run(get_stage("curate"), cfg).artifact
    share = Artifact.load(art.path / "share")  # a dataset artifact of its own
    assert share.kind == "dataset"
    rep = json.loads((art.path / "share" / "release_report.json").read_text())
    released = [json.loads(x) for s in ("train", "validation", "test")
                for x in (art.path / "share" / f"{s}.jsonl").read_text().splitlines()]  # fmt: skip
    assert rep["records"]["released"] == len(released) == rep["records"]["curated"] - rep["k_anonymity"]["records_suppressed"]
    # Direct identifiers: names gone; ids and user ids are keyed tokens, consistent across records.
    assert all("name" not in r and r["id"].startswith("p_") and r["user_id"].startswith("p_") for r in released)
    assert len({r["user_id"] for r in released}) <= 60
    # Quasi-identifiers are generalised and every combination occurs >= k times.
    combos = Counter((r["age"], r["zip"], r["gender"]) for r in released)
    assert min(combos.values()) >= 5 == rep["k_anonymity"]["k_required"]
    assert rep["k_anonymity"]["k_achieved"] == min(combos.values())
    assert rep["k_anonymity"]["records_suppressed"] >= 1  # the lone 90-99 year-old is not released
    assert all(r["zip"].endswith("**") and "-" in r["age"] for r in released)
    # No PII left (the curate step pseudonymised the e-mails); the scan says so.
    assert rep["residual_pii_scan"]["hits"] == 0 and rep["pii_removed_by_curate"]["email"] == 300
    assert not any("@example.com" in r["text"] for r in released)
    # DP counts: Laplace noise with the epsilon split over the total and one column.
    counts = json.loads((art.path / "share" / "counts.json").read_text())
    truth = Counter(r["gender"] for r in released)
    assert rep["epsilon_spent"] == 2.0 and counts["epsilon_per_release"] == 1.0
    for g, n in truth.items():
        assert abs(counts["columns"]["gender"][g] - n) <= 15  # scale 1: |noise| > 15 has probability 3e-7
    assert art.stats["release"]["k_anonymity"]["k_achieved"] >= 5


def test_share_with_residual_pii_fails_in_one_line(tmp_path: Path, repo_root: Path) -> None:
    src = _source(tmp_path / "tickets.jsonl", n=40)
    cfg_path = tmp_path / "curate.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(src, pii=False)))
    env = {**os.environ, "SHOESTRING_PII_KEY": KEY}
    run = subprocess.run([sys.executable, "-m", "shoestring.cli", "curate", "-c", str(cfg_path), "-w", str(tmp_path / "ws")],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2
    err = [line for line in run.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "residual PII (email)" in err[0] and "Traceback" not in run.stderr
    assert not list((tmp_path / "ws" / "artifacts").glob("curate-*"))  # nothing was committed


def test_share_refuses_the_public_development_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoestring.core.errors import ShoestringError

    monkeypatch.delenv("SHOESTRING_PII_KEY", raising=False)
    cfg = parse_config(CurateConfig, _config(_source(tmp_path / "t.jsonl", n=20), pii=True), "test")
    with pytest.raises(ShoestringError, match="secret key"):
        Workspace(tmp_path / "ws").run(get_stage("curate"), cfg)
