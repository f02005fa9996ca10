"""Benchmark scripts and examples cannot rot unseen: every ``tokenloom`` name they import
(at the top or inside a function) and every ``tokenloom.<name>`` they use must exist.

``python -m pytest benches --collect-only`` (in CI) catches broken imports of the benchmark
suites; this test covers the stand-alone scripts (``benches/*.py`` run by hand, ``examples/``),
whose imports often sit inside ``main()``. Nothing is run, no model is loaded.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for d in ("benches", "examples") for p in (ROOT / d).rglob("*.py"))


def _has(module: str, name: str) -> bool:
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError:
        return False
    return True


def tokenloom_references(tree: ast.AST):
    """(line, module, name or None) of every tokenloom import and ``tokenloom.<name>`` use."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tokenloom":
            for a in node.names:
                yield node.lineno, node.module, a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "tokenloom":
                    yield node.lineno, a.name, None
                    if a.asname is None and a.name == "tokenloom":
                        aliases.add("tokenloom")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            yield node.lineno, "tokenloom", node.attr


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports_resolve(path):
    missing = []
    for line, module, name in tokenloom_references(ast.parse(path.read_text(), str(path))):
        try:
            ok = importlib.import_module(module) is not None if name is None else _has(module, name)
        except ModuleNotFoundError:
            ok = False
        if not ok:
            missing.append(f"{path.name}:{line}: {module}{'' if name is None else '.' + name}")
    assert not missing, "names that no longer exist:\n" + "\n".join(missing)
