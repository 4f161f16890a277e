"""Recipes cannot write outside their workspace through a stage id, and secrets (API keys, the
pseudonym key) never reach a file a run writes nor its output. Real CLI on a tiny curate recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shoestring.core.errors import ShoestringError
from shoestring.core.recipe import load_recipe
from shoestring.core.workspace import Workspace


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "t.jsonl"
    rows = [{"id": f"r{i}", "text": f"ticket {i}: the backup fails, mail me at p{i}@example.com or call +44 20 7946 0{i:03d}"}
            for i in range(30)]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def _recipe(tmp_path: Path, sid: str, **curate: object) -> Path:
    body = {"stage": "curate", "sources": [{"path": str(_source(tmp_path))}], "workers": 1,
            "quality": {"enabled": False}, "dedup": {"exact": False, "near": False}, **curate}  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "workspace": str(tmp_path / "ws"), "stages": {sid: body}}))
    return path


def _run(recipe: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SHOESTRING_PII_KEY", "SHOESTRING_API_KEYS")}
    return subprocess.run([sys.executable, "-m", "shoestring.cli", "run", str(recipe)], cwd=cwd,
                          env={**base, **env}, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("sid", ["../../evil", "/tmp/shoestring-evil", "a/b", "..", ".hidden", "artifacts", "runs", "x\ny"])
def test_a_stage_id_that_is_a_path_is_refused_before_anything_runs(tmp_path: Path, sid: str) -> None:
    with pytest.raises(ShoestringError, match="stage") as err:
        load_recipe(_recipe(tmp_path, sid))
    assert "\n" not in str(err.value) and "stages" in str(err.value)
    assert not (tmp_path / "ws").exists()


def test_the_cli_refuses_an_escaping_stage_id_in_one_line_and_writes_nothing_outside(tmp_path: Path) -> None:
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    run = _run(_recipe(tmp_path, "../../evil"), cwd, {})
    assert run.returncode == 2, run.stderr[-2000:]
    err = [line for line in run.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "'../../evil' is not a plain name" in err[0] and "Traceback" not in run.stderr
    assert not list(tmp_path.rglob("evil")) and not (tmp_path / "ws").exists()


def test_a_workspace_link_is_never_a_path(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    for name in ("../evil", str(tmp_path / "evil"), "a/../../evil"):
        with pytest.raises(ShoestringError, match="not a plain name"):
            ws.link(name, None)  # type: ignore[arg-type]  # refused before the artifact is looked at
    assert not (tmp_path / "evil").exists()


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_secrets_never_reach_the_files_or_output_of_a_run(tmp_path: Path, repo_root: Path) -> None:
    pii_key, api_key = "pii-key-" + "9c1d7e" * 5, "api-key-" + "4b8f2a" * 5
    env = {"SHOESTRING_PII_KEY": pii_key, "SHOESTRING_API_KEYS": api_key, "SHOESTRING_CACHE": str(tmp_path / "cache")}
    ok = _run(_recipe(tmp_path, "data", pii={"mode": "pseudonym"}), tmp_path, env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    # A failing run too: its error line lands in the run record.
    (tmp_path / "ws2").mkdir()
    recipe = _recipe(tmp_path, "data", pii={"mode": "pseudonym"}, share={"enabled": True})
    recipe.write_text(recipe.read_text().replace(str(tmp_path / "ws"), str(tmp_path / "ws2")))
    bad = _run(recipe, tmp_path, {**env, "SHOESTRING_PII_KEY": "short-secret"})
    assert bad.returncode == 2 and "under 16" in bad.stderr, bad.stderr[-2000:]
    files = _files(tmp_path / "ws", tmp_path / "ws2", tmp_path / "cache")
    names = {p.name for p in files}
    assert {"manifest.json", "run.json"} <= names and any(p.parent.name == "runs" for p in files)
    text = "".join(p.read_text(errors="replace") for p in files if p.suffix == ".jsonl")
    assert "user-" in text and "@example.com" not in text  # the key was used
    for secret in (pii_key, api_key, "short-secret"):
        assert secret not in ok.stdout + ok.stderr + bad.stdout + bad.stderr
        leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaked, (secret, leaked)
