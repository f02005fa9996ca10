"""The package's shape: no import circle between its modules (module-level imports, the lazy
ones inside functions included), no private name imported from another module, and every
subpackage documented."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "python" / "tokenloom"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: pathlib.Path, lazy: bool):
    """(imported module, names) pairs of ``path``; ``lazy`` includes imports inside functions.
    TYPE_CHECKING blocks are skipped."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and (top or lazy):
                base = child.module
                if child.level:
                    pkg = _module_name(path).split(".")
                    if path.name != "__init__.py":
                        pkg = pkg[:-1]
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    base = ".".join(pkg + [child.module])
                out.append((base, [a.name for a in child.names]))
            elif isinstance(child, ast.Import) and (top or lazy):
                out.extend((a.name, []) for a in child.names)
            visit(child, inner)

    visit(tree, True)
    return out


def _graph(lazy: bool):
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for base, names in _imports(path, lazy):
            if not base.startswith("tokenloom"):
                continue
            targets = [base] + [f"{base}.{n}" for n in names]
            for t in targets:
                if t in mods and t != m:
                    graph[m].add(t)
    return graph


def _cycle(graph):
    color, stack = {}, []

    def dfs(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if color.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in color:
                found = dfs(v)
                if found:
                    return found
        stack.pop()
        color[u] = 2
        return None

    for u in sorted(graph):
        if u not in color:
            found = dfs(u)
            if found:
                return found
    return None


def _strip_packages(graph):
    """Package ``__init__`` modules re-export their children: an edge to a package is an edge
    to what it imports, and a child importing its own package's __init__ is not a circle."""
    mods = set(graph)
    out = {}
    for m, targets in graph.items():
        out[m] = {t for t in targets if not (m.startswith(t + ".") and t in mods)}
    return out


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-lazy"])
def test_no_import_circle(lazy):
    cycle = _cycle(_strip_packages(_graph(lazy)))
    assert cycle is None, " -> ".join(cycle)


def test_no_private_name_imported_across_modules():
    bad = []
    for m, path in _modules().items():
        for base, names in _imports(path, lazy=True):
            if not base.startswith("tokenloom"):
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__") and n not in ("_core",):
                    bad.append(f"{m} imports {n} from {base}")
    assert not bad, bad


def test_every_subpackage_has_a_docstring():
    for init in PKG.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(PKG)} has no docstring"


#: The package's layers, lowest first: a module may import from its own layer and the ones
#: below, never from a layer above (lazy imports inside functions included). The request types
#: sit under everything that decodes; ``generate`` and the method table sit on top of the loop.
LAYERS = [
    ["tokenloom._core", "tokenloom._arrays", "tokenloom._moved", "tokenloom.device"],
    ["tokenloom.sampling"],
    ["tokenloom.request", "tokenloom.runtime"],
    ["tokenloom.verify", "tokenloom.bytelevel"],
    ["tokenloom.spec", "tokenloom.scores"],
    ["tokenloom.decoding"],
    ["tokenloom.integrations", "tokenloom.cascades"],
    ["tokenloom.eval"],
    ["tokenloom.cli", "tokenloom.__main__", "tokenloom"],
]


def _unit(module: str) -> str:
    """The layer unit of a module: its top subpackage (``tokenloom.spec.loop`` -> ``tokenloom.spec``)."""
    return ".".join(module.split(".")[:2])


def _layer_of(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{unit} has no layer in tests/test_layout.py LAYERS: add it")


def _layer_edges():
    """``{module: imported modules}``, lazy imports included; ``from pkg import sub`` (a
    submodule, or the compiled ``_core``) is an edge to ``pkg.sub`` alone, not to ``pkg``'s
    ``__init__``."""
    mods = _modules()
    edges = {}
    for m, path in mods.items():
        out = edges.setdefault(m, set())
        for base, names in _imports(path, lazy=True):
            if not base.startswith("tokenloom"):
                continue
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in mods or f"{base}.{n}" == "tokenloom._core"]
            if names and len(subs) == len(names):
                out.update(subs)
            else:
                out.update(t for t in [base] + subs if t in mods and t != m)
    return edges


def test_no_import_points_up_a_layer():
    up = []
    for m, targets in _layer_edges().items():
        for t in targets:
            a, b = _layer_of(_unit(m)), _layer_of(_unit(t))
            if b > a:
                up.append(f"{m} (layer {a}) imports {t} (layer {b})")
    assert not up, "\n".join(up)


def test_no_circle_between_subpackages():
    units = {}
    for m, targets in _strip_packages(_graph(lazy=True)).items():
        units.setdefault(_unit(m), set()).update(_unit(t) for t in targets if _unit(t) != _unit(m))
    for u in list(units):
        for v in units[u]:
            units.setdefault(v, set())
    cycle = _cycle({u: {v for v in vs if v != "tokenloom"} for u, vs in units.items()})
    assert cycle is None, " -> ".join(cycle)


def test_core_is_imported_in_one_spelling():
    """``from tokenloom import _core`` everywhere; no ``from tokenloom._core import X``."""
    other = [
        f"{m}: from {base} import {', '.join(names)}"
        for m, path in _modules().items()
        for base, names in _imports(path, lazy=True)
        if base == "tokenloom._core"
    ]
    assert not other, other


# --- tests mirror the package ----------------------------------------------------------------

TESTS = pathlib.Path(__file__).resolve().parent
#: Tests of the package as a whole (not of one module), at the top of tests/.
PACKAGE_WIDE = {"test_docs", "test_hostile_input", "test_layout", "test_script_imports", "test_stubs", "test_wheel"}


def _module_for(test: pathlib.Path):
    """The module ``tests/<sub>/test_<name>[_<aspect>].py`` tests: ``<sub>/<name>.py`` (or a
    subpackage ``<sub>/<name>/``); at the top ``test_core`` is ``_core`` and ``test_init`` the
    package's ``__init__``. None when no module matches."""
    rel = test.relative_to(TESTS)
    where = PKG.joinpath(*rel.parent.parts)
    stem = test.stem[len("test_"):]
    names = [p.stem for p in where.glob("*.py*")] + [p.name for p in where.iterdir() if p.is_dir() and (p / "__init__.py").exists()] if where.is_dir() else []
    for name in sorted(names, key=len, reverse=True):
        bare = name.strip("_")
        if stem == bare or stem.startswith(bare + "_"):
            return where / name
    return None


def test_tests_mirror_the_package():
    """Every module's tests are found from its path: ``python/tokenloom/<sub>/<module>.py`` is
    tested in ``tests/<sub>/test_<module>*.py``; shared references live in ``tests/reference/``."""
    bad = []
    for test in sorted(TESTS.rglob("test_*.py")):
        if test.parent == TESTS and test.stem in PACKAGE_WIDE:
            continue
        if _module_for(test) is None:
            bad.append(str(test.relative_to(TESTS)))
    assert not bad, f"test files that name no module of the package (rename or move them): {bad}"
    assert all(not p.name.startswith("test_") for p in (TESTS / "reference").glob("*.py"))


def test_mirror_check_can_fail():
    assert _module_for(TESTS / "spec" / "test_loop.py") is not None
    assert _module_for(TESTS / "test_core.py") is not None and _module_for(TESTS / "test_init.py") is not None
    assert _module_for(TESTS / "spec" / "test_nothing_here.py") is None
    assert _module_for(TESTS / "nowhere" / "test_loop.py") is None
