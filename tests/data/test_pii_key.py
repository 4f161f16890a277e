"""The pseudonym key is required: a curate run that pseudonymises without a user key (or with the
public development key) stops before any work with one line saying what to set (real CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shoestring.core.errors import ShoestringError
from shoestring.data.config import PIIConfig
from shoestring.data.pii import DEV_KEY, PIIScrubber


def _curate(tmp_path: Path, repo_root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": f"ticket {i}: mail me at p{i}@example.com"}) + "\n"
                           for i in range(20)))  # fmt: skip
    cfg = {"sources": [{"path": str(src)}], "workers": 1, "quality": {"enabled": False},
           "dedup": {"exact": False, "near": False}, "pii": {"mode": "pseudonym"}}  # fmt: skip
    (tmp_path / "curate.yaml").write_text(yaml.safe_dump(cfg))
    base = {k: v for k, v in os.environ.items() if k != "SHOESTRING_PII_KEY"}
    cmd = [sys.executable, "-m", "shoestring.cli", "curate", "-c", str(tmp_path / "curate.yaml"), "-w", str(tmp_path / "ws")]
    return subprocess.run(cmd, cwd=repo_root, env={**base, **env}, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("env", "says"),
    [({}, "pii: mode pseudonym needs a pseudonym key"), ({"SHOESTRING_PII_KEY": DEV_KEY}, "development pseudonym key is public")],
)
def test_pseudonymising_without_a_user_key_stops_before_any_work(
    tmp_path: Path, repo_root: Path, env: dict[str, str], says: str
) -> None:
    run = _curate(tmp_path, repo_root, env)
    assert run.returncode == 2, run.stderr[-2000:]
    err = [line for line in run.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert says in err[0] and "$SHOESTRING_PII_KEY" in err[0] and "pii.key_file" in err[0]
    assert not list((tmp_path / "ws").rglob("*.stats.json"))  # no chunk was processed
    assert not list((tmp_path / "ws" / "artifacts").glob("curate-*"))


def test_with_a_user_key_the_same_run_pseudonymises(tmp_path: Path, repo_root: Path) -> None:
    run = _curate(tmp_path, repo_root, {"SHOESTRING_PII_KEY": "a-user-key"})  # short is allowed off a shared release
    assert run.returncode == 0, run.stderr[-2000:]
    [art] = (tmp_path / "ws" / "artifacts").glob("curate-*")
    text = "".join(p.read_text() for p in art.rglob("*.jsonl"))
    assert "@example.invalid" in text and "@example.com" not in text


def test_the_scrubber_needs_a_key_only_in_pseudonym_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOESTRING_PII_KEY", raising=False)
    with pytest.raises(ShoestringError, match=r"needs a pseudonym key; set \$SHOESTRING_PII_KEY"):
        PIIScrubber(PIIConfig(mode="pseudonym"))
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(ShoestringError, match="needs a pseudonym key"):
        PIIScrubber(PIIConfig(mode="pseudonym", key_file=tmp_path / "empty.key"))  # an empty file is no key
    for mode in ("redact", "mask", "hash"):
        assert PIIScrubber(PIIConfig(mode=mode)).scrub("mail a@example.org") != "mail a@example.org"
    monkeypatch.setenv("SHOESTRING_PII_KEY", "k1")
    assert PIIScrubber(PIIConfig(mode="pseudonym")).key == b"k1"
