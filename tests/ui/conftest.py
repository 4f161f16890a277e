"""Fixtures for the dashboard tests: one tiny real recipe run (curate -> plan -> train -> evaluate
-> assess on a 2-layer Llama), made once per session through the real CLI, and a running
`shoestring ui` server over it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from ui_helpers import Server, TinyRun, cli_env, start_ui, tiny_recipe

from tiny_models import save_tiny_llama


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    root = tmp_path_factory.mktemp("ui-root")
    model = save_tiny_llama(root / "tiny-llama", hidden=32, intermediate=64, layers=2)
    (root / "recipes").mkdir()
    recipe = tiny_recipe(root / "recipes" / "tiny.yaml", root / ".shoestring" / "tiny", model)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "shoestring.cli", "run", str(recipe)], cwd=root, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return TinyRun(root, root / ".shoestring" / "tiny", recipe, model, time.perf_counter() - t0)


@pytest.fixture(scope="session")
def ui_server(tiny_run: TinyRun) -> Iterator[Server]:
    server = start_ui(tiny_run.root)
    yield server
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
