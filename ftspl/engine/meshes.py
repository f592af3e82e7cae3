"""Load gallery meshes from disk and normalise them for rendering.

Why this module is strict: gallery folders come from the wild (ModelNet OFF
files, ShapeNet OBJs with broken MTLs, glTF exports, scans saved as point
clouds). Every file either becomes a clean :class:`Mesh` or raises
:class:`~ftspl.engine.errors.MeshLoadError` with ``path: reason`` so that the
indexer can skip it with one readable line instead of crashing or silently
rendering garbage.

Security/robustness decisions (trimesh does the parsing):

* Only **geometry** is loaded (``skip_materials=True``): gallery views are
  rendered with one grey material, so MTL files and textures are never read.
  That also means no texture image is decoded (no decompression bombs) and no
  ``mtllib ../../etc/passwd`` style reference is followed.
* Files that geometry *does* depend on (a ``.gltf``'s external ``.bin``
  buffers) are read through :class:`~ftspl.engine.trimesh_parse.FolderResolver`, which serves only
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
* OFF is read by :func:`_parse_off`, not trimesh: trimesh 5 (numpy 2) fails on
  every valid OFF file with a polygon of more than four sides, and allocates
  whatever vertex count the header declares before checking it.
* trimesh is imported only when a file needs it (glTF/GLB, PLY, STL, OBJs the
  fast reader declines), in :mod:`ftspl.engine.trimesh_parse`: importing it
  costs ~0.8 s here, which ``index add`` paid twice (listing extensions in the
  parent, starting the render child) before the first OBJ/OFF was rendered.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ftspl.engine.constants import (
    MAX_FACES,
    MAX_FILE_BYTES,
    MAX_VERTICES,
    NORMALIZE_RADIUS,
    UP_AXES,
)
from ftspl.engine.errors import MeshLoadError, UnknownKeyError
from ftspl.engine.inputs import check_input_file

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
    """A triangle soup ready for rendering: float32 (n, 3) vertices, int32 (m, 3) faces."""

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must have shape (n, 3), got {self.vertices.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must have shape (m, 3), got {self.faces.shape}")

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])


@dataclass(frozen=True)
class MeshLimits:
    """Caps that refuse hostile or absurd files (CLI flags override the defaults)."""

    max_file_bytes: int = MAX_FILE_BYTES
    max_faces: int = MAX_FACES
    max_vertices: int = MAX_VERTICES


def _merge(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], saw_points: bool, path: Path, limits: MeshLimits
) -> Mesh:
    """Check the caps, apply transforms and concatenate the parts into one validated Mesh."""
    n_faces = sum(len(f) for _, f, _ in parts)
    n_vertices = sum(len(v) for v, _, _ in parts)
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
    for v, f, transform in parts:
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
    return _validated(np.concatenate(vertices), np.concatenate(faces), path)


def _validated(vertices: np.ndarray, faces: np.ndarray, path: Path) -> Mesh:
    """Drop unreferenced vertices, refuse non-finite or zero-area geometry."""
    # Stray vertices not used by any face would distort the bounding box and
    # so the normalisation; drop them (O(n), no sort).
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    if not used.all():
        remap = np.cumsum(used) - 1
        vertices, faces = vertices[used], remap[faces]
    if not np.isfinite(vertices).all():
        raise MeshLoadError(path, "vertices contain NaN or infinite coordinates")
    if np.abs(vertices).max() > np.finfo(np.float32).max / 4:
        raise MeshLoadError(path, "vertex coordinates are too large for float32")
    extent = float(np.ptp(vertices, axis=0).max())
    if extent <= 0.0:
        raise MeshLoadError(path, "all vertices coincide; the mesh has zero size")
    # Face areas relative to the size of the mesh: a mesh whose faces are all
    # slivers (lines/points) would render as nothing at all.
    a, b, c = (vertices[faces[:, i]] / extent for i in range(3))
    with np.errstate(over="ignore", invalid="ignore"):  # huge but finite coordinates
        double_area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not (double_area > 1e-12).any():
        raise MeshLoadError(path, "all faces are degenerate (zero area); nothing to render")
    return Mesh(vertices.astype(np.float32), faces.astype(np.int32))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MeshLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc


#: glTF extensions that replace the geometry with a compressed stream trimesh cannot decode.
_COMPRESSION_EXTENSIONS = {
    "KHR_draco_mesh_compression": "Draco",
    "EXT_meshopt_compression": "meshoptimizer",
}


def _glb_json(data: bytes, path: Path) -> bytes:
    """The JSON chunk of a binary glTF (GLB) file, from its 20-byte header."""
    if len(data) < 20 or data[:4] != b"glTF":
        raise MeshLoadError(path, "corrupt GLB file: no 'glTF' header")
    (version,) = struct.unpack_from("<I", data, 4)
    if version != 2:
        raise MeshLoadError(path, f"GLB version {version} is not supported; only glTF 2.0 (re-export the file)")
    chunk_len, chunk_type = struct.unpack_from("<I4s", data, 12)
    if chunk_type != b"JSON" or 20 + chunk_len > len(data):
        raise MeshLoadError(path, "corrupt GLB file: the first chunk is not a complete JSON chunk")
    return data[20 : 20 + chunk_len]


def _check_gltf(doc: object, path: Path, limits: MeshLimits) -> None:
    """Refuse glTF documents that would exhaust memory, loop, or decode to garbage.

    Why before trimesh: an accessor's ``count`` is trusted by the parser (an
    accessor without a buffer view is allocated as zeros of that size), node
    cycles make the scene graph search give up only after its iteration
    limit, and compressed primitives silently load as degenerate triangles.
    """
    if not isinstance(doc, dict):
        raise MeshLoadError(path, "corrupt glTF: the JSON document is not an object")
    asset = doc.get("asset")
    version = str(asset.get("version", "")) if isinstance(asset, dict) else ""
    if version.split(".")[0] != "2":
        raise MeshLoadError(
            path, f"glTF version {version or '(missing)'} is not supported; only glTF 2.0 (re-export the file)"
        )

    def items(key: str) -> list:
        value = doc.get(key, [])
        if not isinstance(value, list):
            raise MeshLoadError(path, f"corrupt glTF: '{key}' is not an array")
        return value

    required = items("extensionsRequired")
    for ext, name in _COMPRESSION_EXTENSIONS.items():
        if ext in required:
            raise MeshLoadError(
                path, f"geometry is {name}-compressed ({ext}), which ftspl cannot decode; export it uncompressed"
            )
    max_elements = max(limits.max_vertices, 3 * limits.max_faces)
    for i, acc in enumerate(items("accessors")):
        if not isinstance(acc, dict):
            raise MeshLoadError(path, f"corrupt glTF: accessor {i} is not an object")
        counts = [acc.get("count", 0)]
        if isinstance(acc.get("sparse"), dict):
            counts.append(acc["sparse"].get("count", 0))
        for count in counts:
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise MeshLoadError(path, f"corrupt glTF: accessor {i} has an invalid count {count!r}")
            if count > max_elements:
                raise MeshLoadError(
                    path,
                    f"glTF accessor {i} declares {count} elements, over the limit of {max_elements} "
                    "(--max-vertices, 3 x --max-faces)",
                )
    for key in ("buffers", "bufferViews"):
        for i, item in enumerate(items(key)):
            size = item.get("byteLength", 0) if isinstance(item, dict) else None
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise MeshLoadError(path, f"corrupt glTF: {key}[{i}] has an invalid byteLength {size!r}")
            if size > limits.max_file_bytes:
                raise MeshLoadError(
                    path, f"glTF {key}[{i}] declares {size} bytes, over the limit of {limits.max_file_bytes}; "
                    "raise --max-file-bytes"
                )
    _check_node_tree(items("nodes"), path)


def _check_node_tree(nodes: list, path: Path) -> None:
    """Child indices must exist and the node hierarchy must have no cycle (iterative DFS)."""
    children: list[list[int]] = []
    for i, node in enumerate(nodes):
        kids = node.get("children", []) if isinstance(node, dict) else None
        if not isinstance(kids, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(nodes) for k in kids
        ):
            raise MeshLoadError(path, f"corrupt glTF: node {i} has invalid children")
        children.append(kids)
    state = [0] * len(nodes)  # 0 new, 1 on the current path, 2 done
    for root in range(len(nodes)):
        if state[root]:
            continue
        stack = [(root, iter(children[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state[child] == 1:
                raise MeshLoadError(
                    path, f"corrupt glTF: the node hierarchy has a cycle (node {child} is its own ancestor)"
                )
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(children[child])))


def _trimesh_loader(file_type: str, path: Path, limits: MeshLimits, data: bytes | None = None) -> Mesh:
    """Parse one file (or its already read ``data``) with trimesh, geometry only, and validate the result."""
    from ftspl.engine import (
        trimesh_parse,  # here, not at the top: see the module docstring
    )

    resolver = trimesh_parse.FolderResolver(path, limits.max_file_bytes)
    source: str | io.BytesIO = str(path) if data is None else io.BytesIO(data)
    if file_type in ("gltf", "glb"):
        data = _read_bytes(path) if data is None else data
        raw = data if file_type == "gltf" else _glb_json(data, path)
        # trimesh answers invalid glTF JSON by looking for a 'model.gltf' asset
        # instead, which yields a baffling message; parse the JSON ourselves.
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise MeshLoadError(path, f"corrupt {file_type.upper()} file: not valid JSON ({exc})") from exc
        except RecursionError:
            raise MeshLoadError(path, f"corrupt {file_type.upper()} file: JSON nested too deeply") from None
        _check_gltf(doc, path, limits)
        source = io.BytesIO(data)
    try:
        with np.errstate(all="ignore"):  # NaN/inf files are refused below; no stray RuntimeWarnings
            parts, saw_points = trimesh_parse.parse(source, file_type, resolver)
    except MemoryError as exc:
        raise MeshLoadError(path, "not enough memory to parse the file") from exc
    # Why a broad clause here (and only here): trimesh's parsers for hostile or
    # truncated files raise arbitrary types (ValueError, KeyError, IndexError,
    # struct.error, UnicodeDecodeError, AttributeError, json errors...), and a
    # corrupt gallery file must become one skip-able MeshLoadError, not a crash.
    except Exception as exc:  # third-party parser boundary (see above)
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MeshLoadError(path, f"corrupt or unreadable {file_type.upper()} file ({reason})") from exc
    return _merge(parts, saw_points, path, limits)


def _obj_loader(path: Path, limits: MeshLimits) -> Mesh:
    """OBJ via the fast geometry-only reader; trimesh takes the files it declines."""
    from ftspl.engine.obj_fast import TooManyFaces, parse_obj

    data = _read_bytes(path)
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


_INDENTED = re.compile(rb"^[ \t]+(?=\S)", re.MULTILINE)


#: ``OFF``, ``COFF``, ``NOFF``, ``STCNOFF``...; the 4-D and n-D variants are refused.
_OFF_KEYWORD = re.compile(r"(ST)?C?N?(4)?(n)?OFF", re.ASCII)


def _parse_off(data: bytes, path: Path, limits: MeshLimits) -> tuple[np.ndarray, np.ndarray]:
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


def _off_loader(path: Path, limits: MeshLimits) -> Mesh:
    vertices, faces = _parse_off(_read_bytes(path), path, limits)
    return _merge([(vertices, faces, None)], len(faces) == 0 and len(vertices) > 0, path, limits)


#: Loader per lowercase file extension. Every loader takes (path, limits) and
#: returns a validated :class:`Mesh` or raises :class:`MeshLoadError`.
LOADERS: dict[str, Callable[[Path, MeshLimits], Mesh]] = {
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


def load_mesh(path: str | Path, limits: MeshLimits = MeshLimits()) -> Mesh:
    """Load a mesh file into a validated, un-normalised :class:`Mesh`.

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
    mesh = loader(path, limits)
    log.debug("loaded %s: %d vertices, %d faces", path, len(mesh.vertices), mesh.n_faces)
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
    return Mesh(v.astype(np.float32), mesh.faces.copy())
