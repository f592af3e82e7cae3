"""trimesh's part of mesh loading: parsing, the folder-confined asset resolver, scene flattening, materials.

Why a module of its own: importing trimesh costs ~0.8 s here (scipy and
friends), and most galleries are OBJ/OFF, which ftspl parses itself. Keeping
every trimesh import in this module, imported only by
:func:`ftspl.engine.loading.meshes._trimesh_loader` when a file needs it, keeps that
cost off ``index add``'s start (the parent lists extensions; the render child
starts before the first mesh) and off anything that only needs ``MeshLimits``.

With ``materials=True`` (the ``materials`` look) trimesh also reads MTL files,
texture images, glTF materials and vertex/face colours; each part then carries
a :class:`~ftspl.engine.loading.materials.Paint`. trimesh skips a material asset
it cannot read without saying so, so :class:`MaterialResolver` notes every asset
that is missing or not an image, for the loader to warn about.
"""

from __future__ import annotations

import io
import urllib.parse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import trimesh
from trimesh.resolvers import Resolver

from ftspl.engine.loading.materials import Paint

__all__ = ["FolderResolver", "MaterialResolver", "Part", "collect_parts", "paint_of", "parse"]


class Part(NamedTuple):
    """One geometry of the file, in the file's coordinates: what the loader merges into a Mesh."""

    vertices: np.ndarray
    faces: np.ndarray
    transform: np.ndarray | None = None  #: the scene node's world transform, if any
    paint: Paint | None = None  #: what it wears (only when loaded with materials)


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


#: File name endings of the image assets :class:`MaterialResolver` checks.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".tif", ".tiff", ".webp")


class MaterialResolver(FolderResolver):
    """A :class:`FolderResolver` that notes what it could not serve, for the loader's warnings.

    ``problems`` collects one short reason per material asset (an MTL file or a
    texture) that is missing, outside the folder, too large, or an image file
    that PIL cannot identify (trimesh would drop it without a word).
    """

    def __init__(self, mesh_path: Path, max_bytes: int) -> None:
        super().__init__(mesh_path, max_bytes)
        self.problems: list[str] = []

    def get(self, name: str) -> bytes:
        try:
            data = super().get(name)
        except (OSError, ValueError) as exc:
            self.problems.append(str(exc))
            raise
        if name.strip().lower().endswith(_IMAGE_SUFFIXES):
            from PIL import Image

            try:
                Image.open(io.BytesIO(data))  # reads the header only
            # UnidentifiedImageError, OSError, DecompressionBombError, SyntaxError...: only noted here,
            # trimesh then drops the image itself
            except Exception as exc:  # noqa: BLE001 - third-party decoder boundary (see above)
                self.problems.append(f"texture {name!r} is not a readable image ({type(exc).__name__})")
        return data


def _rgb(value: object) -> tuple[float, float, float] | None:
    """An integer (0..255) or float (0..1) RGB[A] colour as 0..1 floats; None if it is not one."""
    if value is None:
        return None
    raw = np.asarray(value)
    arr = raw.astype(np.float64).ravel()
    if arr.size < 3 or not np.isfinite(arr[:3]).all():
        return None
    rgb = arr[:3] / 255.0 if raw.dtype.kind in "iu" else arr[:3]
    return tuple(float(c) for c in np.clip(rgb, 0.0, 1.0))


def _rgba_rows(colors: object, n: int) -> np.ndarray | None:
    """(n, 4) uint8 colours from trimesh's (n, 3|4) array, or None if they do not fit."""
    arr = np.asarray(colors)
    if arr.ndim != 2 or len(arr) != n or arr.shape[1] not in (3, 4):
        return None
    if arr.dtype.kind == "f":
        arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255)
    arr = arr.astype(np.uint8)
    if arr.shape[1] == 3:
        arr = np.concatenate([arr, np.full((n, 1), 255, np.uint8)], axis=1)
    return arr


def paint_of(geom: trimesh.Trimesh, max_vertices: int | None = None,
             problems: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, Paint | None]:
    """(vertices, faces, paint) of one geometry as its visual describes it.

    Texture visuals give the material's colour (OBJ ``Kd`` only when the MTL
    sets it; glTF ``baseColorFactor``, white by the glTF rules) and its image
    (``map_Kd`` / ``baseColorTexture``) with the UVs; colour visuals give vertex
    colours, or face colours, for which each face gets vertices of its own
    (flat colour per face, at three times the vertices; left out, with a note in
    ``problems``, where that would pass ``max_vertices``).
    """
    vertices, faces = np.asarray(geom.vertices), np.asarray(geom.faces)
    visual = getattr(geom, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        material = getattr(visual, "material", None)
        if material is None:
            return vertices, faces, None
        if isinstance(material, trimesh.visual.material.PBRMaterial):
            factor = material.baseColorFactor
            color = _rgb(factor) if factor is not None else (1.0, 1.0, 1.0)
            image = material.baseColorTexture
        else:
            # The MTL's own Kd (trimesh keeps it as floats), not trimesh's default diffuse for none.
            kd = (getattr(material, "kwargs", None) or {}).get("kd")
            kd = None if kd is None else np.asarray(kd, dtype=np.float64).ravel()
            color = None if kd is None else _rgb(np.repeat(kd, 3) if kd.size == 1 else kd)
            image = getattr(material, "image", None)
        if getattr(image, "format", None) is None:
            image = None  # not read from a file: trimesh's grey placeholder for UVs without a material
        uv = getattr(visual, "uv", None)
        uvs = None if uv is None or len(uv) != len(vertices) else np.asarray(uv, dtype=np.float32)
        attrs = getattr(visual, "vertex_attributes", None) or {}
        vcolors = _rgba_rows(attrs["color"], len(vertices)) if "color" in attrs else None
        return vertices, faces, Paint(color, image if uvs is not None else None, uvs, vcolors)
    if kind == "vertex":
        return vertices, faces, Paint(vertex_colors=_rgba_rows(visual.vertex_colors, len(vertices)))
    if kind == "face":
        colors = _rgba_rows(visual.face_colors, len(faces))
        if colors is None:
            return vertices, faces, None
        if max_vertices is not None and 3 * len(faces) > max_vertices:
            if problems is not None:
                problems.append(f"face colours left out: one vertex per face corner would pass the "
                                f"limit of {max_vertices} vertices")
            return vertices, faces, None
        corners = faces.reshape(-1)
        return (vertices[corners], np.arange(len(corners)).reshape(-1, 3),
                Paint(vertex_colors=np.repeat(colors, 3, axis=0)))
    return vertices, faces, None


def collect_parts(loaded: object, materials: bool = False, max_vertices: int | None = None,
                  problems: list[str] | None = None) -> tuple[list[Part], bool]:
    """Whatever trimesh returned (Trimesh, Scene, PointCloud...) as :class:`Part` records.

    Scenes (glTF/GLB, multi-object OBJ) are flattened by walking the scene
    graph and applying each node's world transform, so instanced geometry and
    node hierarchies land where the file places them. Non-triangle geometry
    (paths, point clouds) inside a scene is ignored. Returns the parts and
    whether point clouds were seen (for the error message). With ``materials``
    each part carries its :func:`paint_of`.

    Runs inside the parser boundary of :func:`ftspl.engine.loading.meshes._trimesh_loader`: trimesh
    evaluates the scene graph lazily, so a hostile node hierarchy fails here,
    not in ``trimesh.load``.
    """

    def part(geom: trimesh.Trimesh, transform: np.ndarray | None) -> Part:
        if not materials:
            return Part(np.asarray(geom.vertices), np.asarray(geom.faces), transform)
        vertices, faces, paint = paint_of(geom, max_vertices, problems)
        return Part(vertices, faces, transform, paint)

    parts: list[Part] = []
    saw_points = False
    if isinstance(loaded, trimesh.Trimesh):
        parts.append(part(loaded, None))
    elif isinstance(loaded, trimesh.Scene):
        for node in loaded.graph.nodes_geometry:
            transform, geom_name = loaded.graph[node]
            geom = loaded.geometry.get(geom_name)
            if isinstance(geom, trimesh.Trimesh):
                parts.append(part(geom, np.asarray(transform)))
            elif isinstance(geom, trimesh.PointCloud):
                saw_points = True
    elif isinstance(loaded, trimesh.PointCloud):
        saw_points = True
    return parts, saw_points


def parse(source: object, file_type: str, resolver: FolderResolver, materials: bool = False,
          max_vertices: int | None = None) -> tuple[list[Part], bool]:
    """``trimesh.load`` (no remote or outside assets, no processing), flattened to parts.

    Geometry only unless ``materials``: then MTL files, textures and colours are
    read too (through ``resolver``, confined to the mesh's folder; a
    :class:`MaterialResolver` also collects what was left out).
    """
    loaded = trimesh.load(
        source,
        file_type=file_type,
        resolver=resolver,
        allow_remote=False,
        process=False,
        skip_materials=not materials,
    )
    problems = resolver.problems if isinstance(resolver, MaterialResolver) else None
    return collect_parts(loaded, materials, max_vertices, problems)
