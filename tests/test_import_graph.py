"""No import circle between modules, in ``ftspl/`` and in ``benchmarks/``, read from the source with ``ast``.

Every import counts: at module level, inside functions, and under
``if TYPE_CHECKING:`` (a circle that only a type checker walks is still a knot
a reader has to untie). ``from pkg import name`` is an edge to ``pkg.name``
when that is a module, else to ``pkg``; a parent package that Python
initialises on the way is no edge (see :func:`resolve`). The benchmark scripts import each
other by bare name (``from common import ...``, their folder is on
``sys.path``), so a bare name that is a file in ``benchmarks/`` is that file.

The same trees keep every module at most :data:`MAX_LINES` lines long.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(folder: str) -> dict[str, Path]:
    """``dotted name -> file`` for every ``.py`` under ``ROOT/folder`` (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every dotted name ``source`` imports, anywhere in it (``from X import Y`` gives ``X.Y``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 more
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def resolve(name: str, known: set[str]) -> str | None:
    """The module an imported dotted name lands in: itself, else its nearest enclosing module.

    ``from pkg import sub`` is an edge to ``pkg.sub`` alone when ``sub`` is a module: the
    parent package that Python initialises on the way counts no more than it does for
    ``import pkg.sub``, else every package whose ``__init__`` re-exports a child would be a circle.
    """
    while name and name not in known:  # `from a.b import c` of a function c: the module a.b
        name = name.rpartition(".")[0]
    return name or None


def import_graph(folder: str) -> dict[str, set[str]]:
    """``module -> modules of the same tree it imports`` (bare script names resolved inside ``benchmarks/``)."""
    files = module_files(folder)
    known = set(files)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges = set()
        for name in imported_names(path.read_text(), mod, path.name == "__init__.py"):
            if folder == "benchmarks" and f"benchmarks.{name.split('.')[0]}" in known:
                name = f"benchmarks.{name}"
            target = resolve(name, known)
            if target and target != mod:
                edges.add(target)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_reader_sees_function_level_type_checking_and_relative_imports() -> None:
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import Thing\n"
           "def f():\n    import pkg.c.d\n    from . import e\n    from .f import g\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.c.d", "pkg.e", "pkg.f"}
    edges = {resolve(n, known) for n in imported_names(src, "pkg.a", False)} - {None}
    assert edges == {"pkg.b", "pkg.c.d", "pkg.e", "pkg.f"}  # no edge to the parent package itself
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_covers_both_trees() -> None:
    ftspl, bench = import_graph("ftspl"), import_graph("benchmarks")
    assert "ftspl.serve.routes" in ftspl["ftspl.serve.app"]  # a real edge, read from the source
    assert len(ftspl) > 100 and len(bench) > 5
    assert any(edges for edges in bench.values())  # scripts import their shared helpers by bare name


def test_no_import_circle_in_ftspl() -> None:
    """No module of the package reaches itself through imports (the index and scale packages included)."""
    bad = cycles(import_graph("ftspl"))
    assert not bad, f"import circles: {bad}"


def test_no_import_circle_in_benchmarks() -> None:
    bad = cycles(import_graph("benchmarks"))
    assert not bad, f"import circles: {bad}"


MAX_LINES = 400


def test_no_module_over_400_lines() -> None:
    """Every module of ``ftspl/`` and ``benchmarks/`` has at most 400 lines: a longer one is split by concern."""
    over = {}
    for folder in ("ftspl", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            n = len(path.read_bytes().splitlines())
            if n > MAX_LINES:
                over[str(path.relative_to(ROOT))] = n
    assert not over, f"modules over {MAX_LINES} lines (split each into modules by concern): {over}"
