"""No deserialiser that can run code reads anything a user hands us.

The source tree is parsed (``ast``, not grep: aliases, ``from torch import load`` and keyword
arguments are seen for what they are). ``torch.load`` must pass ``weights_only=True``,
``numpy.load`` must pass ``allow_pickle=False``, and a pickle-family load is allowed only in the
functions of ``ALLOWED`` below, each with the reason it never sees user input.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# (file under src/, enclosing function) -> why its pickle load never reads user-supplied bytes.
ALLOWED: dict[tuple[str, str], str] = {
    ("shoestring/data/executors.py", "_run_pickled"): (
        "Ray Data row function: unpickles the (fn, args) task our own driver pickled a moment "
        "earlier, between our own processes; no file or request is read"
    ),
    ("shoestring/data/quality.py", "_load_langid"): (
        "the langid model cache in our own cache folder, written by this function from the model "
        "bundled with langid.py; whoever can write there can already replace the installed code"
    ),
}

# Module name -> the functions of it that unpickle (or run marshalled code).
PICKLE_LOADERS = {
    "pickle": {"load", "loads", "Unpickler"},
    "_pickle": {"load", "loads", "Unpickler"},
    "cloudpickle": {"load", "loads"},
    "ray.cloudpickle": {"load", "loads"},
    "dill": {"load", "loads"},
    "joblib": {"load"},
    "marshal": {"load", "loads"},
    "shelve": {"open"},
    "pandas": {"read_pickle"},
}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


class _Scanner(ast.NodeVisitor):
    """Collects (line, function, what) for every unsafe load call in one module."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name -> fully dotted name ("np" -> "numpy", "load" -> "torch.load")
        self.stack: list[str] = ["<module>"]
        self.found: list[tuple[int, str, str]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{node.module}.{a.name}" if node.module else a.name

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _resolve(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        full = self.aliases.get(head, head)
        return f"{full}.{rest}" if rest else full

    def visit_Call(self, node: ast.Call) -> None:
        dotted = _dotted(node.func)
        if dotted is not None:
            name = self._resolve(dotted)
            module, _, func = name.rpartition(".")
            where = self.stack[-1]
            if name in ("torch.load", "torch.serialization.load") and not _keyword_is(node, "weights_only", True):
                self.found.append((node.lineno, where, f"{name} without weights_only=True"))
            elif name == "numpy.load" and not _keyword_is(node, "allow_pickle", False):
                self.found.append((node.lineno, where, "numpy.load without allow_pickle=False"))
            elif func in PICKLE_LOADERS.get(module, ()):
                self.found.append((node.lineno, where, name))
        self.generic_visit(node)


def unsafe_loads(source: str) -> list[tuple[int, str, str]]:
    scanner = _Scanner()
    scanner.visit(ast.parse(source))
    return scanner.found


def test_the_scanner_sees_through_aliases_and_keywords() -> None:
    source = """
import torch, pickle as pk, numpy as np
from torch import load as tl
from ray import cloudpickle
import pandas as pd

def f(p):
    torch.load(p)
    tl(p, weights_only=False)
    torch.load(p, weights_only=True)
    pk.loads(p)
    cloudpickle.loads(p)
    np.load(p)
    np.load(p, allow_pickle=False)
    pd.read_pickle(p)
"""
    found = [(line, what) for line, fn, what in unsafe_loads(source) if fn == "f"]
    assert found == [
        (8, "torch.load without weights_only=True"),
        (9, "torch.load without weights_only=True"),
        (11, "pickle.loads"),
        (12, "ray.cloudpickle.loads"),
        (13, "numpy.load without allow_pickle=False"),
        (15, "pandas.read_pickle"),
    ]


def test_no_unsafe_load_in_src_outside_the_allow_list() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 100  # the tree was found
    bad, used = [], set()
    for path in files:
        rel = path.relative_to(SRC).as_posix()
        for line, fn, what in unsafe_loads(path.read_text(encoding="utf-8")):
            if (rel, fn) in ALLOWED and "torch.load" not in what and "numpy" not in what:
                used.add((rel, fn))
            else:
                bad.append(f"{rel}:{line} in {fn}(): {what}")
    assert not bad, "unsafe deserialisation (pass weights_only=True / allow_pickle=False, or justify in ALLOWED):\n" + "\n".join(bad)
    assert used == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used}"
