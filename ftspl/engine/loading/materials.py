"""A mesh's own materials, carried from the file to the renderer (the ``materials`` look).

What a shape wears, in the form the renderer draws in one pass per material:

* per-vertex RGBA colours (PLY vertex colours, face colours spread to their
  corners, glTF ``COLOR_0``), white where the file has none;
* per-vertex texture coordinates, zero where the file has none;
* one :class:`Material` per run of consecutive faces: a base colour (OBJ ``Kd``,
  glTF ``baseColorFactor``; ``None`` means the spec's grey) and at most one
  texture image (OBJ ``map_Kd``, glTF ``baseColorTexture``).

Why textures are decoded here, with caps of their own: the files come from the
wild, like the meshes. An image is refused before decoding when its header
declares more than :data:`~ftspl.engine.constants.MAX_IMAGE_PIXELS` pixels (a
decompression bomb), decoded at most :data:`TEXTURE_MAX_SIDE` pixels on a side
(JPEG's draft mode decodes big ones at a fraction of the cost; a 224 px view shows
no finer detail), and a mesh decodes at most :data:`TEXTURE_BUDGET_PIXELS` texels
in all. A texture that cannot be read, or is over a cap, is left out with a logged
warning: its faces keep their base colour. A broken material never fails a shape.

Nothing here imports trimesh: :mod:`ftspl.engine.loading.trimesh_parse` turns
trimesh's visuals into :class:`Paint` records, and :func:`build_materials` merges them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.constants import MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

__all__ = [
    "TEXTURE_BUDGET_PIXELS",
    "TEXTURE_MAX_SIDE",
    "Material",
    "Materials",
    "Paint",
    "build_materials",
    "texture_array",
]

TEXTURE_MAX_SIDE = 1024  #: textures are decoded at most this many pixels on a side
TEXTURE_BUDGET_PIXELS = 16 * 1024 * 1024  #: decoded texels per mesh (64 MiB of RGBA)

WHITE = (1.0, 1.0, 1.0)


@dataclass
class Paint:
    """What one part of a file (one geometry of trimesh's scene) wears, before merging.

    ``image`` is a PIL image as trimesh opened it (lazily: not decoded yet), used
    only with ``uvs``. ``vertex_colors`` is (n, 4) uint8 for the part's n vertices.
    """

    color: tuple[float, float, float] | None = None
    image: object | None = None
    uvs: np.ndarray | None = None
    vertex_colors: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.color is None and self.image is None and self.vertex_colors is None


@dataclass
class Material:
    """One run of consecutive faces: ``faces`` faces with a base colour and maybe a texture."""

    faces: int
    color: tuple[float, float, float] | None = None  #: 0..1 RGB; None: the render spec's grey
    texture: np.ndarray | None = None  #: (H, W, 4) uint8, row 0 at the top of the image


@dataclass
class Materials:
    """A mesh's materials: per-vertex colours and UVs, and one :class:`Material` per face run."""

    colors: np.ndarray  #: (n, 4) uint8
    uvs: np.ndarray  #: (n, 2) float32
    groups: list[Material]

    def __post_init__(self) -> None:
        self.colors = np.ascontiguousarray(self.colors, dtype=np.uint8)
        self.uvs = np.ascontiguousarray(self.uvs, dtype=np.float32)

    def check(self, n_vertices: int, n_faces: int) -> None:
        """Raise ValueError unless the arrays fit a mesh of ``n_vertices`` and ``n_faces``."""
        if self.colors.shape != (n_vertices, 4) or self.uvs.shape != (n_vertices, 2):
            raise ValueError(
                f"material arrays {self.colors.shape}/{self.uvs.shape} do not fit {n_vertices} vertices"
            )
        if sum(g.faces for g in self.groups) != n_faces or any(g.faces < 0 for g in self.groups):
            raise ValueError(f"material face runs do not add up to the mesh's {n_faces} faces")

    def subset(self, keep: np.ndarray) -> Materials:
        """The same materials for the vertices where ``keep`` (bool, per vertex) is True."""
        return Materials(self.colors[keep], self.uvs[keep], self.groups)


def texture_array(image: object, max_side: int = TEXTURE_MAX_SIDE, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a (lazily opened) PIL image into (H, W, 4) uint8 RGBA, at most ``max_side`` on a side.

    Raises ValueError with a short reason for an image that is too large to
    decode or cannot be decoded (truncated, corrupt, an unknown mode).
    """
    from PIL import Image

    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError("the image is empty")
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} pixels exceed the limit of {max_pixels}")
    try:
        if max(width, height) > max_side:
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
        rgba = image.convert("RGBA")
        if max(rgba.size) > max_side:
            rgba.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return np.asarray(rgba, dtype=np.uint8)
    # PIL raises OSError (truncated), SyntaxError (bad PNG chunks), ValueError, struct.error,
    # Image.DecompressionBombError...: a broken texture must cost its texture, never the shape.
    except Exception as exc:  # noqa: BLE001 - third-party decoder boundary (see above)
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(f"cannot decode it ({reason})") from None


def _image_name(image: object) -> str:
    info = getattr(image, "info", None) or {}
    name = info.get("file_path") or getattr(image, "filename", None)
    return f"'{name}'" if name else "an embedded image"


class _Textures:
    """Decodes each distinct image once, within the mesh's texel budget."""

    def __init__(self, path: Path, budget: int) -> None:
        self.path, self.left = path, budget
        self.done: dict[int, np.ndarray | None] = {}

    def get(self, image: object) -> np.ndarray | None:
        key = id(image)
        if key not in self.done:
            self.done[key] = self._decode(image)
        return self.done[key]

    def _decode(self, image: object) -> np.ndarray | None:
        try:
            texture = texture_array(image)
        except ValueError as exc:
            log.warning("%s: texture %s is left out (%s); its faces keep their colour", self.path,
                        _image_name(image), exc)
            return None
        texels = texture.shape[0] * texture.shape[1]
        if texels > self.left:
            log.warning("%s: texture %s is left out: the mesh's textures exceed %d texels in all; "
                        "its faces keep their colour", self.path, _image_name(image), TEXTURE_BUDGET_PIXELS)
            return None
        self.left -= texels
        return texture


def build_materials(
    paints: list[Paint | None], vertex_counts: list[int], face_counts: list[int], path: Path,
    budget: int = TEXTURE_BUDGET_PIXELS,
) -> Materials | None:
    """Merge the parts' paints (in the order their vertices and faces are concatenated).

    A textured part without a colour of its own shows its texture unmodulated
    (white); a part whose texture was left out keeps its own colour, or the
    spec's grey. Returns None when, after that, no part wears anything, so the
    shape renders exactly as in the grey look.
    """
    if all(p is None or p.empty for p in paints):
        return None
    n = sum(vertex_counts)
    colors = np.full((n, 4), 255, dtype=np.uint8)
    uvs = np.zeros((n, 2), dtype=np.float32)
    textures = _Textures(path, budget)
    groups: list[Material] = []
    worn = False
    start = 0
    for paint, nv, nf in zip(paints, vertex_counts, face_counts):
        stop = start + nv
        if paint is None or paint.empty:
            groups.append(Material(nf))
            start = stop
            continue
        if paint.vertex_colors is not None:
            colors[start:stop] = paint.vertex_colors
            worn = True
        texture = None
        if paint.image is not None and paint.uvs is not None and len(paint.uvs) == nv:
            texture = textures.get(paint.image)
            if texture is not None:
                uvs[start:stop] = np.nan_to_num(paint.uvs, nan=0.0, posinf=0.0, neginf=0.0)
        color = paint.color if paint.color is not None else (WHITE if texture is not None else None)
        worn = worn or color is not None
        groups.append(Material(nf, color, texture))
        start = stop
    return Materials(colors, uvs, groups) if worn else None
