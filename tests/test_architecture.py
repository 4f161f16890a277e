"""The house rules of docs/ARCHITECTURE.md ("Layers"), read from the code's own imports.

Every import counts: module level, inside functions and under ``TYPE_CHECKING`` alike, since
each one is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "shoestring"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every shoestring import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("shoestring")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.startswith("shoestring"):
                out.append((module, [a.name for a in node.names], node.lineno))
    return out


def _targets(module: str, names: list[str]) -> list[str]:
    """The files an import reads: ``from a import b`` reads ``a.b`` when that is a module."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    if len(found) < len(names) or not names:
        found.append(module)
    return [m for m in found if m in MODULES]


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_no_module_imports_another_packages_private_names() -> None:
    """``from shoestring.train.tabular import _load_digits`` from evaluate/ is a private
    dependency: the owner cannot rename it without breaking a stranger. Expose a public name."""
    bad = []
    for name, path in MODULES.items():
        for module, names, line in _imports(path):
            if _package(module) == _package(name):
                continue
            private = [n for n in names if n.startswith("_")]
            private += [p for p in module.split(".")[2:] if p.startswith("_")]
            # module objects imported whole: `from shoestring.train import data as D; D._x`
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} {private}")
        tree = ast.parse(path.read_text())
        aliases = {
            (a.asname or a.name): f"{n.module}.{a.name}"
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("shoestring")
            for a in n.names
            if f"{n.module}.{a.name}" in MODULES
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and _package(aliases[node.value.id]) != _package(name)
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert not bad, "imports of another package's private names:\n" + "\n".join(bad)


def _file_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in _imports(path):
            graph[name].update(t for t in _targets(module, names) if t != name)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter
                counter += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(sorted(graph[nxt]))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
    return out


# Circles another change is breaking right now; an entry that no longer occurs is harmless,
# a circle not listed here fails.
_BEING_BROKEN: list[set[str]] = [
]


def test_no_import_circles_between_files() -> None:
    circles = [c for c in _circles(_file_graph()) if set(c) not in _BEING_BROKEN]
    assert not circles, "files that import each other in a loop (move the shared names down):\n" + "\n".join(
        " <-> ".join(c) for c in circles
    )


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_layers_point_down() -> None:
    """The import-linter contract in pyproject.toml (``[tool.importlinter]``): each layer
    imports only the layers below it; siblings in one layer do not import each other."""
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.is_file(), "lint-imports is missing: install the dev extra (`make install-all`)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [str(exe), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
