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


def _curate_cli(cfg: dict, tmp_path: Path, repo_root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:  # type: ignore[type-arg]
    cfg_path = tmp_path / "curate.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    base = {k: v for k, v in os.environ.items() if k != "SHOESTRING_PII_KEY"}
    return subprocess.run([sys.executable, "-m", "shoestring.cli", "curate", "-c", str(cfg_path), "-w", str(tmp_path / "ws")],
                          cwd=repo_root, env={**base, **env}, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "needs a pseudonym key"),
        ({"SHOESTRING_PII_KEY": "shoestring-dev-key-not-secret"}, "development pseudonym key is public"),
        ({"SHOESTRING_PII_KEY": "short-key"}, "9 characters, under 16"),
    ],
)
def test_share_without_a_real_key_stops_before_any_work(
    tmp_path: Path, repo_root: Path, env: dict[str, str], says: str
) -> None:
    run = _curate_cli(_config(_source(tmp_path / "t.jsonl", n=20), pii=True), tmp_path, repo_root, env)
    assert run.returncode == 2, run.stderr[-2000:]
    err = [line for line in run.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and says in err[0] and "$SHOESTRING_PII_KEY" in err[0] and "secrets.token_urlsafe" in err[0]
    assert "Traceback" not in run.stderr
    assert not list((tmp_path / "ws").rglob("*.stats.json"))  # no chunk was processed: it stopped first
    assert not list((tmp_path / "ws" / "artifacts").glob("curate-*"))


def test_share_key_from_a_file_never_appears_in_the_workspace(tmp_path: Path, repo_root: Path) -> None:
    secret = "file-key-" + "7f3a9c" * 5
    (tmp_path / "pii.key").write_text(secret + "\n")
    cfg = _config(_source(tmp_path / "t.jsonl", n=60), pii=True)
    cfg["pii"]["key_file"] = str(tmp_path / "pii.key")
    run = _curate_cli(cfg, tmp_path, repo_root, {})
    assert run.returncode == 0, run.stderr[-2000:]
    assert secret not in run.stdout + run.stderr
    files = [p for p in (tmp_path / "ws").rglob("*") if p.is_file()]
    assert any(p.name == "release_report.json" for p in files)
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaked, leaked  # not in manifests, reports, logs or the run record


def test_the_same_key_from_env_or_file_gives_the_same_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoestring.data.config import PIIConfig
    from shoestring.data.pii import PIIScrubber

    (tmp_path / "k").write_text(KEY)
    text = "write to ada@example.org"
    monkeypatch.delenv("SHOESTRING_PII_KEY", raising=False)
    from_file = PIIScrubber(PIIConfig(mode="pseudonym", key_file=tmp_path / "k"), shareable=True).scrub(text)
    monkeypatch.setenv("SHOESTRING_PII_KEY", KEY)
    assert PIIScrubber(PIIConfig(mode="pseudonym"), shareable=True).scrub(text) == from_file
    monkeypatch.setenv("SHOESTRING_PII_KEY", "another-key-of-this-user")
    assert PIIScrubber(PIIConfig(mode="pseudonym"), shareable=False).scrub(text) != from_file  # the key matters


def test_pii_scrubber_of_a_shareable_release_refuses_the_development_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoestring.core.errors import ShoestringError
    from shoestring.data.config import PIIConfig
    from shoestring.data.pii import DEV_KEY, PIIScrubber

    monkeypatch.delenv("SHOESTRING_PII_KEY", raising=False)
    with pytest.raises(ShoestringError, match="pii: mode pseudonym needs a pseudonym key"):
        PIIScrubber(PIIConfig(mode="pseudonym"))  # local-only too: no public fallback (tests/data/test_pii_key.py)
    for value in (None, DEV_KEY):
        if value is not None:
            monkeypatch.setenv("SHOESTRING_PII_KEY", value)
        with pytest.raises(ShoestringError, match="SHOESTRING_PII_KEY"):
            PIIScrubber(PIIConfig(mode="pseudonym"), shareable=True)


def test_share_refuses_the_public_development_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoestring.core.errors import ShoestringError

    monkeypatch.delenv("SHOESTRING_PII_KEY", raising=False)
    cfg = parse_config(CurateConfig, _config(_source(tmp_path / "t.jsonl", n=20), pii=True), "test")
    with pytest.raises(ShoestringError, match="needs a pseudonym key"):
        Workspace(tmp_path / "ws").run(get_stage("curate"), cfg)
