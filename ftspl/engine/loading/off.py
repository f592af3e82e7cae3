"""The OFF reader (ASCII Object File Format), vectorised with numpy.

Why not trimesh: trimesh 5 (numpy 2) fails on every valid OFF file with a polygon
of more than four sides, and allocates whatever vertex count the header declares
before checking it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ftspl.engine.errors import MeshLoadError

if TYPE_CHECKING:
    from ftspl.engine.loading.limits import MeshLimits

#: ``OFF``, ``COFF``, ``NOFF``, ``STCNOFF``...; the 4-D and n-D variants are refused.
_OFF_KEYWORD = re.compile(r"(ST)?C?N?(4)?(n)?OFF", re.ASCII)


def parse_off(data: bytes, path: Path, limits: MeshLimits) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (n, 3) float64 and fan-triangulated faces (m, 3) int64 of an ASCII OFF file.

    Counts are checked against the caps and against the number of lines
    before anything is allocated; polygons are fan-triangulated per polygon
    size with numpy. Colours, normals and texture coordinates are ignored.
    """
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln for ln in (raw.split("#", 1)[0].strip() for raw in text.splitlines()) if ln]
    if not lines:
        raise MeshLoadError(path, "file contains no triangles; a surface mesh with faces is required")
    head = lines[0].split()
    keyword = _OFF_KEYWORD.fullmatch(head[0])
    if keyword:
        if keyword.group(2) or keyword.group(3):
            raise MeshLoadError(path, f"{head[0]} files are not 3-D meshes; only OFF with x y z vertices is read")
        rest, start = head[1:], 1
        if rest and rest[0].upper() == "BINARY":
            raise MeshLoadError(path, "binary OFF is not supported; save it as ASCII OFF, PLY or STL")
        if not rest:
            if len(lines) < 2:
                raise MeshLoadError(path, "corrupt OFF file: the vertex/face count line is missing")
            rest, start = lines[1].split(), 2
    elif head[0].isdigit():  # the keyword is optional in Geomview's format
        rest, start = head, 1
    else:
        raise MeshLoadError(path, f"not an OFF file (it starts with {head[0][:20]!r}, 'OFF' expected)")
    try:
        n_vertices, n_faces = int(rest[0]), int(rest[1])
    except (IndexError, ValueError):
        raise MeshLoadError(path, "corrupt OFF file: the vertex/face count line is malformed") from None
    if n_vertices < 0 or n_faces < 0:
        raise MeshLoadError(path, "corrupt OFF file: negative vertex or face count")
    if n_vertices > limits.max_vertices:
        raise MeshLoadError(
            path, f"{n_vertices} vertices exceed the limit of {limits.max_vertices}; "
            "simplify the mesh or raise --max-vertices"
        )
    if n_faces > limits.max_faces:
        raise MeshLoadError(
            path, f"{n_faces} faces exceed the limit of {limits.max_faces}; simplify the mesh or raise --max-faces"
        )
    if start + n_vertices + n_faces > len(lines):
        raise MeshLoadError(
            path, f"truncated OFF file: it declares {n_vertices} vertices and {n_faces} faces "
            f"but holds {len(lines) - start} data lines"
        )
    try:
        vertices = np.array([ln.split()[:3] for ln in lines[start : start + n_vertices]], dtype=np.float64)
    except ValueError:
        raise MeshLoadError(path, "corrupt OFF file: a vertex line is not three numbers") from None
    if vertices.shape != (n_vertices, 3):
        raise MeshLoadError(path, "corrupt OFF file: a vertex line has fewer than three coordinates")
    by_size: dict[int, list[list[str]]] = {}
    for number, ln in enumerate(lines[start + n_vertices : start + n_vertices + n_faces], 1):
        tokens = ln.split()
        try:
            size = int(tokens[0])
        except ValueError:
            raise MeshLoadError(path, f"corrupt OFF file: face {number} does not start with its vertex count") from None
        if size < 3:
            continue  # points and edges have no area
        if len(tokens) <= size:
            raise MeshLoadError(path, f"corrupt OFF file: face {number} lists fewer than its {size} vertices")
        by_size.setdefault(size, []).append(tokens[1 : size + 1])
    triangles = [np.zeros((0, 3), np.int64)]
    try:
        for size, rows in by_size.items():
            poly = np.array(rows, dtype=np.int64)
            # fan around the first corner: (0, j, j + 1) for j = 1 .. size - 2
            fan = np.stack([np.stack([poly[:, 0], poly[:, j], poly[:, j + 1]], axis=1) for j in range(1, size - 1)], 1)
            triangles.append(fan.reshape(-1, 3))
    except (ValueError, OverflowError):
        raise MeshLoadError(path, "corrupt OFF file: a face index is not an integer") from None
    return vertices, np.concatenate(triangles)
