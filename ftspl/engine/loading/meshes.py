"""Load gallery meshes from disk and normalise them for rendering.

Why this module is strict: gallery folders come from the wild (ModelNet OFF
files, ShapeNet OBJs with broken MTLs, glTF exports, scans saved as point
clouds). Every file either becomes a clean :class:`Mesh` or raises
:class:`~ftspl.engine.errors.MeshLoadError` with ``path: reason`` so that the
indexer can skip it with one readable line instead of crashing or silently
rendering garbage.

Security/robustness decisions (trimesh does the parsing):

* Only **geometry** is loaded (``skip_materials=True``) unless the render
  spec's look is ``materials``: in the grey look MTL files and textures are
  never read, so no texture image is decoded. With ``materials=True`` trimesh
  reads them through the same folder-confined resolver (no ``mtllib
  ../../etc/passwd`` style reference is followed), and
  :mod:`ftspl.engine.loading.materials` decodes textures under caps of their
  own; a material that cannot be read costs its colour or texture, with a
  logged warning, never the shape.
* Files that geometry *does* depend on (a ``.gltf``'s external ``.bin``
  buffers) are read through :class:`~ftspl.engine.loading.trimesh_parse.FolderResolver`, which serves only
  regular files inside the mesh's own folder and never fetches URLs
  (``allow_remote=False``).
* The file size is checked **before** parsing; face/vertex caps right after.
* ``process=False``: trimesh's vertex merging is slow on big meshes and not
  needed for flat-shaded renders; we validate the raw arrays ourselves.
* glTF/GLB JSON is checked before trimesh sees it: accessor and buffer sizes
  against the caps (an accessor without data declaring two billion vertices
  would otherwise be allocated), node hierarchies for cycles (trimesh's scene
  graph gives up with "Iteration limit exceeded" long after parsing), and
  compressed geometry (Draco/meshopt), which trimesh cannot decode and would
  turn into garbage triangles.
* OFF is read by :mod:`ftspl.engine.loading.off`, not trimesh: trimesh 5 (numpy 2) fails on
  every valid OFF file with a polygon of more than four sides, and allocates
  whatever vertex count the header declares before checking it.
* trimesh is imported only when a file needs it (glTF/GLB, PLY, STL, OBJs the
  fast reader declines), in :mod:`ftspl.engine.loading.trimesh_parse`: importing it
  costs ~0.8 s here, which ``index add`` would otherwise pay twice (listing
  extensions in the parent, starting the render child) before the first OBJ/OFF.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ftspl.engine.constants import NORMALIZE_RADIUS, UP_AXES
from ftspl.engine.errors import MeshLoadError, UnknownKeyError
from ftspl.engine.loading import gltf, off
from ftspl.engine.loading.inputs import check_input_file
from ftspl.engine.loading.limits import MeshLimits  # re-exported: its long-standing home
from ftspl.engine.loading.materials import Materials, build_materials

log = logging.getLogger(__name__)

__all__ = [
    "LOADERS",
    "Mesh",
    "MeshLimits",
    "load_mesh",
    "mesh_extensions",
    "normalize",
]


@dataclass
class Mesh:
    """A triangle soup ready for rendering: float32 (n, 3) vertices, int32 (m, 3) faces.

    ``materials`` holds the file's own colours and textures when it was loaded
    with them and has any (the ``materials`` look); None renders grey.
    """

    vertices: np.ndarray
    faces: np.ndarray
    materials: Materials | None = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must have shape (n, 3), got {self.vertices.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must have shape (m, 3), got {self.faces.shape}")
        if self.materials is not None:
            self.materials.check(len(self.vertices), len(self.faces))

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])


def _merge(parts: list[tuple], saw_points: bool, path: Path, limits: MeshLimits) -> Mesh:
    """Check the caps, apply transforms and concatenate the parts into one validated Mesh.

    Each part is ``(vertices, faces, transform)``, or a
    :class:`~ftspl.engine.loading.trimesh_parse.Part` that may carry a paint.
    """
    n_faces = sum(len(p[1]) for p in parts)
    n_vertices = sum(len(p[0]) for p in parts)
    if n_faces == 0:
        what = "a point cloud only" if saw_points else "no triangles"
        raise MeshLoadError(path, f"file contains {what}; a surface mesh with faces is required")
    if n_faces > limits.max_faces:
        raise MeshLoadError(
            path, f"{n_faces} faces exceed the limit of {limits.max_faces}; simplify the mesh or raise --max-faces"
        )
    if n_vertices > limits.max_vertices:
        raise MeshLoadError(
            path,
            f"{n_vertices} vertices exceed the limit of {limits.max_vertices}; "
            "simplify the mesh or raise --max-vertices",
        )

    vertices, faces, offset = [], [], 0
    for v, f, transform, *_ in parts:
        if f.ndim != 2 or f.shape[1] != 3:
            raise MeshLoadError(path, f"faces have shape {f.shape}, expected triangles (m, 3)")
        if v.ndim != 2 or v.shape[1] != 3:  # trimesh's OBJ fallback yields (n, 2) for 'v x y' lines
            raise MeshLoadError(path, f"vertices have shape {v.shape}, expected x y z coordinates (n, 3)")
        v = v.astype(np.float64, copy=False)
        if transform is not None and not np.allclose(transform, np.eye(4)):
            v = v @ transform[:3, :3].T + transform[:3, 3]
        if len(f) and (f.min() < 0 or f.max() >= len(v)):
            raise MeshLoadError(path, "a face refers to a vertex that does not exist")
        vertices.append(v)
        faces.append(f.astype(np.int64, copy=False) + offset)
        offset += len(v)
    paints = [getattr(p, "paint", None) for p in parts]
    materials = (
        None if all(paint is None for paint in paints)
        else build_materials(paints, [len(p[0]) for p in parts], [len(p[1]) for p in parts], path)
    )
    return _validated(np.concatenate(vertices), np.concatenate(faces), path, materials)


def _validated(vertices: np.ndarray, faces: np.ndarray, path: Path, materials: Materials | None = None) -> Mesh:
    """Drop unreferenced vertices, refuse non-finite or zero-area geometry."""
    # Stray vertices not used by any face would distort the bounding box and
    # so the normalisation; drop them (O(n), no sort).
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    if not used.all():
        remap = np.cumsum(used) - 1
        vertices, faces = vertices[used], remap[faces]
        materials = None if materials is None else materials.subset(used)
    if not np.isfinite(vertices).all():
        raise MeshLoadError(path, "vertices contain NaN or infinite coordinates")
    if np.abs(vertices).max() > np.finfo(np.float32).max / 4:
        raise MeshLoadError(path, "vertex coordinates are too large for float32")
    extent = float(np.ptp(vertices, axis=0).max())
    if extent <= 0.0:
        raise MeshLoadError(path, "all vertices coincide; the mesh has zero size")
    # Face areas relative to the size of the mesh: a mesh whose faces are all
    # slivers (lines/points) would render as nothing at all.
    if not _any_face_with_area(vertices, faces, extent):
        raise MeshLoadError(path, "all faces are degenerate (zero area); nothing to render")
    return Mesh(vertices.astype(np.float32), faces.astype(np.int32), materials)


def _any_face_with_area(vertices: np.ndarray, faces: np.ndarray, extent: float, first: int = 256) -> bool:
    """Whether any face has a (relative) area above 1e-12; the first ``first`` faces are tried alone,
    since nearly every mesh has a proper face among them (checking every face of a 17,000-face mesh
    takes about 4 CPU-ms of its load)."""
    for chunk in (faces[:first], faces[first:]):
        if len(chunk):
            a, b, c = (vertices[chunk[:, i]] / extent for i in range(3))
            with np.errstate(over="ignore", invalid="ignore"):  # huge but finite coordinates
                double_area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
            if (double_area > 1e-12).any():
                return True
    return False


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MeshLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc


def _trimesh_loader(file_type: str, path: Path, limits: MeshLimits, data: bytes | None = None,
                    materials: bool = False) -> Mesh:
    """Parse one file (or its already read ``data``) with trimesh and validate the result.

    Geometry only, unless ``materials``: then the file's colours and textures
    come too, and a file trimesh cannot read that way is read again for its
    geometry alone (grey, with a logged warning).
    """
    if materials:
        parsed = _trimesh_parts(file_type, path, limits, data, materials=True)
        if parsed is not None:
            return _merge(*parsed, path, limits)
    return _merge(*_trimesh_parts(file_type, path, limits, data), path, limits)


def _trimesh_parts(file_type: str, path: Path, limits: MeshLimits, data: bytes | None,
                   materials: bool = False) -> tuple[list, bool] | None:
    """trimesh's parts of one file and whether it saw point clouds.

    Raises :class:`MeshLoadError` for a file trimesh cannot parse; with
    ``materials``, returns None instead (after a warning), for the caller to
    read the geometry alone.
    """
    from ftspl.engine.loading import (
        trimesh_parse,  # here, not at the top: see the module docstring
    )

    kind = trimesh_parse.MaterialResolver if materials else trimesh_parse.FolderResolver
    resolver = kind(path, limits.max_file_bytes)
    source: str | io.BytesIO = str(path) if data is None else io.BytesIO(data)
    if file_type in ("gltf", "glb"):
        data = _read_bytes(path) if data is None else data
        raw = data if file_type == "gltf" else gltf.glb_json(data, path)
        # trimesh answers invalid glTF JSON by looking for a 'model.gltf' asset
        # instead, which yields a baffling message; parse the JSON ourselves.
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise MeshLoadError(path, f"corrupt {file_type.upper()} file: not valid JSON ({exc})") from exc
        except RecursionError:
            raise MeshLoadError(path, f"corrupt {file_type.upper()} file: JSON nested too deeply") from None
        gltf.check_gltf(doc, path, limits)
        source = io.BytesIO(data)
    try:
        with np.errstate(all="ignore"):  # NaN/inf files are refused below; no stray RuntimeWarnings
            parsed = trimesh_parse.parse(source, file_type, resolver, materials, limits.max_vertices)
    except MemoryError as exc:
        raise MeshLoadError(path, "not enough memory to parse the file") from exc
    # Why a broad clause here (and only here): trimesh's parsers for hostile or
    # truncated files raise arbitrary types (ValueError, KeyError, IndexError,
    # struct.error, UnicodeDecodeError, AttributeError, json errors...), and a
    # corrupt gallery file must become one skip-able MeshLoadError, not a crash.
    except Exception as exc:  # third-party parser boundary (see above)
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if materials:
            log.warning("%s: cannot read it with its materials (%s); it renders grey", path, reason)
            return None
        raise MeshLoadError(path, f"corrupt or unreadable {file_type.upper()} file ({reason})") from exc
    for problem in getattr(resolver, "problems", ()):
        log.warning("%s: material left out (%s); its faces keep their colour or render grey", path, problem)
    return parsed


_INDENTED = re.compile(rb"^[ \t]+(?=\S)", re.MULTILINE)
#: An OBJ line that gives the file colours: an MTL library, or a vertex with r g b after x y z.
_OBJ_PAINT = re.compile(rb"^[ \t]*(?:mtllib[ \t]|v(?:[ \t]+[^ \t\r\n]+){6})", re.MULTILINE)


def _obj_loader(path: Path, limits: MeshLimits, materials: bool = False) -> Mesh:
    """OBJ via the fast geometry-only reader; trimesh takes the files it declines.

    With ``materials``, an OBJ that names an MTL library or has vertex colours is
    read by trimesh with them (grey files keep the fast reader).
    """
    from ftspl.engine.loading.obj_fast import TooManyFaces, parse_obj

    data = _read_bytes(path)
    if materials and _OBJ_PAINT.search(data):
        parsed = _trimesh_parts("obj", path, limits, data, materials=True)
        if parsed is not None:
            return _merge(*parsed, path, limits)
    if not data.endswith(b"\n"):
        # the fast reader loses a last 'f'/'v' line that has no token and no newline
        # and then misaligns its per-line arrays (IndexError, found by tests/test_fuzz.py)
        data += b"\n"
    for attempt in range(2):
        try:
            vertices, faces = parse_obj(data, max_faces=limits.max_faces)
            break
        except TooManyFaces as exc:
            raise MeshLoadError(
                path, f"{exc} faces exceed the limit of {limits.max_faces}; simplify the mesh or raise --max-faces"
            ) from None
        except ValueError as exc:
            if attempt == 0 and _INDENTED.search(data):
                # trimesh silently drops indented 'v'/'f' lines; dedent and read the file fast
                data = _INDENTED.sub(b"", data)
                continue
            log.debug("%s: fast OBJ reader declined (%s); parsing with trimesh", path, exc)
            return _trimesh_loader("obj", path, limits, data)
    if len(faces) == 0:  # vertices only, or nothing: let trimesh word the refusal
        return _trimesh_loader("obj", path, limits, data)
    return _merge([(vertices, faces, None)], False, path, limits)


def _off_loader(path: Path, limits: MeshLimits, materials: bool = False) -> Mesh:
    """OFF: geometry only in every look (OFF colours are not read)."""
    vertices, faces = off.parse_off(_read_bytes(path), path, limits)
    return _merge([(vertices, faces, None)], len(faces) == 0 and len(vertices) > 0, path, limits)


#: Loader per lowercase file extension. Every loader takes (path, limits, materials=False)
#: and returns a validated :class:`Mesh` or raises :class:`MeshLoadError`.
LOADERS: dict[str, Callable[..., Mesh]] = {
    ".glb": partial(_trimesh_loader, "glb"),
    ".gltf": partial(_trimesh_loader, "gltf"),
    ".obj": _obj_loader,
    ".off": _off_loader,
    ".ply": partial(_trimesh_loader, "ply"),
    ".stl": partial(_trimesh_loader, "stl"),
}


def mesh_extensions() -> tuple[str, ...]:
    """The supported mesh file extensions, sorted (``('.glb', '.gltf', ...)``)."""
    return tuple(sorted(LOADERS))


def load_mesh(path: str | Path, limits: MeshLimits = MeshLimits(), materials: bool = False) -> Mesh:
    """Load a mesh file into a validated, un-normalised :class:`Mesh`.

    ``materials`` (the render spec's ``materials`` look) also loads the file's
    own colours and textures into :attr:`Mesh.materials` (None when it has none).

    Raises :class:`MeshLoadError` (message ``path: reason``) for an unsupported
    extension, a missing/empty/too-big file, corrupt content, no faces (point
    cloud), too many faces/vertices, non-finite or all-degenerate geometry.
    """
    path = Path(path)
    ext = path.suffix.lower()
    loader = LOADERS.get(ext)
    if loader is None:
        raise MeshLoadError(
            path, f"unsupported format '{ext or path.name}'; supported: {', '.join(mesh_extensions())}"
        )
    check_input_file(path, limits.max_file_bytes, MeshLoadError, "--max-file-bytes")
    mesh = loader(path, limits, materials=True) if materials else loader(path, limits)
    log.debug("loaded %s: %d vertices, %d faces%s", path, len(mesh.vertices), mesh.n_faces,
              "" if mesh.materials is None else f", {len(mesh.materials.groups)} materials")
    return mesh


# Rotations that bring the file's up axis onto +Y (rows act on column vectors).
_UP_ROTATIONS: dict[str, np.ndarray] = {
    "y": np.eye(3),
    # -90 degrees about X: (x, y, z) -> (x, z, -y), so +Z becomes +Y.
    "z": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}


def normalize(mesh: Mesh, up: str, radius: float = NORMALIZE_RADIUS) -> Mesh:
    """Return a copy that is upright (+Y), centred and scaled to ``radius``.

    Why bounding-box centre and max vertex norm: that is the usual MVCNN-style
    normalisation and guarantees every vertex sits inside the sphere the
    cameras are placed for (``RenderSpec.camera_distance`` is in its units).
    """
    rotation = _UP_ROTATIONS.get(up)
    if rotation is None:
        raise UnknownKeyError("up axis", up, UP_AXES)
    v = mesh.vertices.astype(np.float64) @ rotation.T
    v -= (v.min(axis=0) + v.max(axis=0)) / 2.0
    scale = float(np.linalg.norm(v, axis=1).max())
    if not math.isfinite(scale) or scale <= 0.0:
        raise ValueError("cannot normalise a mesh with zero extent")
    v *= radius / scale
    return Mesh(v.astype(np.float32), mesh.faces.copy(), mesh.materials)
