"""The layering rules that keep queries and indexing cheap, checked in fresh interpreters.

* Every ``ftspl.engine`` module imports without torch (the serving runtime is torch-free).
* What ``index add`` needs before the first file is parsed (listing mesh files,
  ``MeshLimits``, the render worker, the library) imports without trimesh, which
  costs ~0.8 s; only :mod:`ftspl.engine.trimesh_parse` imports it.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import ftspl.engine

ENGINE_MODULES = sorted(f"ftspl.engine.{m.name}" for m in pkgutil.iter_modules(ftspl.engine.__path__))


def _imports(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_module_never_imports_torch(module: str) -> None:
    assert "torch" not in _imports(module)


@pytest.mark.parametrize(
    "module", ["ftspl.engine.meshes", "ftspl.engine.scan", "ftspl.engine.worker", "ftspl.engine.library"]
)
def test_index_add_start_does_not_import_trimesh(module: str) -> None:
    assert "trimesh" not in _imports(module)


def test_trimesh_parse_is_where_trimesh_is_imported() -> None:
    assert "trimesh" in _imports("ftspl.engine.trimesh_parse")
