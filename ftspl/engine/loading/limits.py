"""The size caps every mesh loader enforces, in a module of their own.

The loaders (:mod:`~ftspl.engine.loading.meshes`, :mod:`~ftspl.engine.loading.gltf`,
:mod:`~ftspl.engine.loading.off`) all take a :class:`MeshLimits`; keeping it apart
from the registry in ``meshes`` means no loader imports the module that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftspl.engine.constants import MAX_FACES, MAX_FILE_BYTES, MAX_VERTICES


@dataclass(frozen=True)
class MeshLimits:
    """Caps that refuse hostile or absurd files (CLI flags override the defaults)."""

    max_file_bytes: int = MAX_FILE_BYTES
    max_faces: int = MAX_FACES
    max_vertices: int = MAX_VERTICES


__all__ = ["MeshLimits"]
