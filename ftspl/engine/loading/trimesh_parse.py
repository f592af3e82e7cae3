"""trimesh's part of mesh loading: parsing, the folder-confined asset resolver, scene flattening.

Why a module of its own: importing trimesh costs ~0.8 s here (scipy and
friends), and most galleries are OBJ/OFF, which ftspl parses itself. Keeping
every trimesh import in this module, imported only by
:func:`ftspl.engine.loading.meshes._trimesh_loader` when a file needs it, keeps that
cost off ``index add``'s start (the parent lists extensions; the render child
starts before the first mesh) and off anything that only needs ``MeshLimits``.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import numpy as np
import trimesh
from trimesh.resolvers import Resolver

__all__ = ["FolderResolver", "collect_parts", "parse"]


class FolderResolver(Resolver):
    """Serve assets referenced by a mesh file only from that file's own folder.

    trimesh >= 5 restricts ``FilePathResolver`` to its folder too, but trimesh 4
    (allowed by our dependency range) does not, so the rule is enforced here:
    the name must resolve to a regular file inside the folder and be no larger
    than the file-size cap. Nothing is ever written.
    """

    def __init__(self, mesh_path: Path, max_bytes: int) -> None:
        self.parent = mesh_path.resolve().parent
        self.file_name = mesh_path.name  # some trimesh loaders read this attribute
        self.max_bytes = max_bytes

    def _locate(self, name: str) -> Path:
        for candidate in (name, urllib.parse.unquote(name)):
            candidate = candidate.strip().lstrip("/\\")
            path = (self.parent / candidate).resolve()
            if path.is_relative_to(self.parent) and path.is_file():
                return path
        raise FileNotFoundError(f"asset {name!r} is not a file inside {self.parent}")

    def get(self, name: str) -> bytes:
        path = self._locate(name)
        if path.stat().st_size > self.max_bytes:
            raise ValueError(f"asset {name!r} is larger than {self.max_bytes} bytes")
        return path.read_bytes()

    def write(self, name: str, data: object) -> None:
        raise PermissionError("mesh loading never writes files")

    def namespaced(self, namespace: str) -> FolderResolver:
        # Namespacing would widen or move the root; keep the mesh folder.
        return self

    def keys(self):
        return (p.name for p in self.parent.iterdir() if p.is_file())


def collect_parts(loaded: object) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], bool]:
    """Whatever trimesh returned (Trimesh, Scene, PointCloud...) as ``(vertices, faces, transform)`` parts.

    Scenes (glTF/GLB, multi-object OBJ) are flattened by walking the scene
    graph and applying each node's world transform, so instanced geometry and
    node hierarchies land where the file places them. Non-triangle geometry
    (paths, point clouds) inside a scene is ignored. Returns the parts and
    whether point clouds were seen (for the error message).

    Runs inside the parser boundary of :func:`ftspl.engine.loading.meshes._trimesh_loader`: trimesh
    evaluates the scene graph lazily, so a hostile node hierarchy fails here,
    not in ``trimesh.load``.
    """
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    saw_points = False
    if isinstance(loaded, trimesh.Trimesh):
        parts.append((np.asarray(loaded.vertices), np.asarray(loaded.faces), None))
    elif isinstance(loaded, trimesh.Scene):
        for node in loaded.graph.nodes_geometry:
            transform, geom_name = loaded.graph[node]
            geom = loaded.geometry.get(geom_name)
            if isinstance(geom, trimesh.Trimesh):
                parts.append((np.asarray(geom.vertices), np.asarray(geom.faces), np.asarray(transform)))
            elif isinstance(geom, trimesh.PointCloud):
                saw_points = True
    elif isinstance(loaded, trimesh.PointCloud):
        saw_points = True
    return parts, saw_points


def parse(source: object, file_type: str, resolver: FolderResolver) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], bool]:
    """``trimesh.load`` (geometry only, no remote or outside assets, no processing), flattened to parts."""
    loaded = trimesh.load(
        source,
        file_type=file_type,
        resolver=resolver,
        allow_remote=False,
        process=False,
        skip_materials=True,
    )
    return collect_parts(loaded)
