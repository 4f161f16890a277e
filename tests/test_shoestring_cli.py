"""End-to-end: the real `shoestring` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXE = [sys.executable, "-m", "shoestring.cli"]


def sh(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_help_lists_every_verb() -> None:
    out = sh("--help")
    assert out.returncode == 0
    for verb in ("curate", "plan", "train", "evaluate", "compress", "serve", "run", "models", "recipes"):
        assert verb in out.stdout, verb


def test_every_extra_verb_module_exists_and_registers() -> None:
    import importlib

    import typer

    from shoestring.cli import EXTRA_VERBS

    for name in EXTRA_VERBS:
        app = typer.Typer()
        importlib.import_module(f"shoestring.{name}").register(app)
        assert app.registered_commands or app.registered_groups, name


def _one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert lines[0].startswith("error:")
    return lines[0]


def test_missing_recipe(tmp_path: Path) -> None:
    assert "file not found" in _one_line_error(sh("run", str(tmp_path / "nope.yaml")))


def test_malformed_recipe(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  curate: {sources: [\n")
    assert "malformed YAML" in _one_line_error(sh("run", str(bad)))


def test_unknown_stage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  x: {stage: fly}\n")
    assert "unknown stage 'fly'" in _one_line_error(sh("run", str(bad)))


def test_unwritable_workspace(tmp_path: Path, repo_root: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("")
    line = _one_line_error(sh("run", "recipes/quickstart.yaml", "--workspace", str(blocker / "ws"), cwd=repo_root))
    assert "not writable" in line


def test_recipes_list(repo_root: Path) -> None:
    out = sh("recipes", "list", cwd=repo_root)
    assert out.returncode == 0 and "quickstart" in out.stdout


def test_usage_errors_exit_2_without_traceback() -> None:
    out = sh("plan", "unexpected-extra-argument")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unexpected extra argument" in out.stderr
