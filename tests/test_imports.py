"""The layering rules that keep queries and indexing cheap, checked in fresh interpreters.

* Every module of ``ftspl.engine`` and ``ftspl.serve``, in every sub-package, and the
  Python API (``ftspl``, ``ftspl.api``, ...) imports without torch (the serving runtime is
  torch-free). What runs after the import is checked in fresh interpreters too: a query and
  an add (tests/test_api.py, tests/test_cli.py).
* What ``index add`` needs before the first file is parsed (listing mesh files,
  ``MeshLimits``, the render worker, the library) imports without trimesh, which
  costs ~0.8 s; only :mod:`ftspl.engine.loading.trimesh_parse` imports it.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys

import pytest


def _walk(package: str) -> list[str]:
    """Every module and sub-package under ``package`` (importing packages only, to find their children)."""
    import importlib

    pkg = importlib.import_module(package)
    return sorted({package, *(m.name for m in pkgutil.walk_packages(pkg.__path__, package + "."))})


ENGINE_MODULES = _walk("ftspl.engine")
#: the server's modules (the [serve] extra); absent when starlette is not installed
SERVE_MODULES = _walk("ftspl.serve") if importlib.util.find_spec("starlette") else []
SUBPACKAGES = ("loading", "rendering", "model", "index", "scoring")


def test_walk_reaches_every_engine_subpackage() -> None:
    for sub in SUBPACKAGES:
        assert any(m.startswith(f"ftspl.engine.{sub}.") for m in ENGINE_MODULES), sub


def _imports(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_walk_reaches_the_server() -> None:
    """The server's modules are in the torch-free list below (a skip, never a silent pass, without [serve])."""
    pytest.importorskip("starlette", reason="the [serve] extra is not installed: the server's modules go unchecked")
    assert {"ftspl.serve.app", "ftspl.serve.routes", "ftspl.serve.live", "ftspl.serve.server"} <= set(SERVE_MODULES)


#: the Python API: ``import ftspl`` and everything a query or an add loads through it
API_MODULES = ["ftspl", "ftspl.api", "ftspl.results", "ftspl.photo_input", "ftspl.modelling", "ftspl.version",
               "ftspl.cli.main", "ftspl.cli.commands"]


@pytest.mark.parametrize("module", ENGINE_MODULES + SERVE_MODULES + API_MODULES)
def test_torch_free_module_never_imports_torch(module: str) -> None:
    assert "torch" not in _imports(module)


@pytest.mark.parametrize(
    "module", ["ftspl.engine.loading.meshes", "ftspl.engine.loading.scan", "ftspl.engine.rendering.worker", "ftspl.engine.index.library"]
)
def test_index_add_start_does_not_import_trimesh(module: str) -> None:
    assert "trimesh" not in _imports(module)


def test_trimesh_parse_is_where_trimesh_is_imported() -> None:
    assert "trimesh" in _imports("ftspl.engine.loading.trimesh_parse")
