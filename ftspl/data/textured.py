"""Textured meshes for the photo domain: an OBJ with its MTL colours, texture maps and transparency.

The gallery's loader (:mod:`ftspl.engine.loading.meshes`) keeps geometry only;
a photo needs the object's own materials. Meshes are centred and scaled to
radius 1 so that the photo renderer's camera ranges mean the same for every
model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ftspl.engine.errors import InputFileError

__all__ = ["Part", "TextureLoadError", "TexturedMesh", "load_textured_mesh"]


class TextureLoadError(InputFileError):
    """A model file cannot be loaded with its materials."""


@dataclass
class Part:
    """One material's triangles, ready to upload (normalised coordinates)."""

    positions: np.ndarray  #: (N, 3) float32
    normals: np.ndarray  #: (N, 3) float32; zeros where the file has none usable
    uvs: np.ndarray  #: (N, 2) float32; zeros without texture
    faces: np.ndarray  #: (F, 3) uint32
    color: tuple[float, float, float]
    alpha: float
    texture: np.ndarray | None  #: (H, W, 4) uint8, row 0 at the top, or None
    specular: float
    shininess: float


@dataclass
class TexturedMesh:
    parts: list[Part] = field(default_factory=list)

    @property
    def n_faces(self) -> int:
        return sum(len(p.faces) for p in self.parts)

    @property
    def textured(self) -> bool:
        return any(p.texture is not None for p in self.parts)


def _mtl_extras(folder: Path) -> dict[str, dict[str, float]]:
    """``d``/``Tr`` (transparency) and ``Ks`` per material name: trimesh keeps neither."""
    out: dict[str, dict[str, float]] = {}
    for mtl in folder.glob("*.mtl"):
        current: dict[str, float] | None = None
        for line in mtl.read_text(encoding="latin-1").splitlines():
            parts = line.split()
            if not parts:
                continue
            key = parts[0]
            try:
                if key == "newmtl" and len(parts) > 1:
                    current = out.setdefault(" ".join(parts[1:]), {})
                elif current is not None and key == "d" and len(parts) > 1:
                    current["alpha"] = float(parts[1])
                elif current is not None and key == "Tr" and len(parts) > 1:
                    current.setdefault("alpha", 1.0 - float(parts[1]))
                elif current is not None and key == "Ks" and len(parts) > 3:
                    current["specular"] = float(np.mean([float(x) for x in parts[1:4]]))
            except ValueError:  # a malformed number: keep the defaults for that key
                continue
    return out


def load_textured_mesh(path: Path, max_texture: int = 1024) -> TexturedMesh:
    """Load an OBJ with its MTL colours and texture maps, centred and scaled to radius 1.

    Why trimesh: it already splits an OBJ by material and resolves ``map_Kd``
    images relative to the file. Transparency and specular colour it does not
    keep are read from the MTL files beside the OBJ.
    """
    import trimesh

    path = Path(path)
    try:
        scene = trimesh.load(path, force="scene", skip_materials=False, process=False)
    # trimesh raises whatever its parsers raise (ValueError, IndexError, KeyError, OSError...)
    except Exception as exc:  # noqa: BLE001 - third-party parser boundary
        raise TextureLoadError(path, f"cannot load with materials: {type(exc).__name__}: {exc}") from None
    extras = _mtl_extras(path.parent)
    # Normals only from the file: trimesh's computed ones average faces of mixed winding
    # into garbage, where the shader's flat normal (screen-space derivatives) is always right.
    file_normals = _has_normals(path)
    mesh = TexturedMesh()
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geom = scene.geometry[name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        pos = trimesh.transform_points(np.asarray(geom.vertices, dtype=np.float64), transform)
        if file_normals:
            with np.errstate(invalid="ignore", divide="ignore"):
                normals = np.asarray(geom.vertex_normals, dtype=np.float64) @ np.asarray(transform)[:3, :3].T
            normals = np.nan_to_num(normals)
        else:
            normals = np.zeros_like(pos)
        visual = geom.visual
        color, texture, uvs = (0.8, 0.8, 0.8), None, None
        material = getattr(visual, "material", None)
        mat_name = getattr(material, "name", None) or ""
        if material is not None:
            diffuse = getattr(material, "diffuse", None)
            if diffuse is None:
                diffuse = getattr(material, "baseColorFactor", None)
            if diffuse is not None:
                color = tuple(float(c) / 255.0 for c in np.asarray(diffuse)[:3])
            image = getattr(material, "image", None)
            if image is None:
                image = getattr(material, "baseColorTexture", None)
            uv = getattr(visual, "uv", None)
            if image is not None and uv is not None and len(uv) == len(pos):
                texture = _texture_array(image, max_texture)
                uvs = np.asarray(uv, dtype=np.float32)
        elif hasattr(visual, "main_color"):
            color = tuple(float(c) / 255.0 for c in np.asarray(visual.main_color)[:3])
        extra = extras.get(mat_name, {})
        mesh.parts.append(
            Part(
                positions=pos.astype(np.float32),
                normals=normals.astype(np.float32),
                uvs=uvs if uvs is not None else np.zeros((len(pos), 2), np.float32),
                faces=np.asarray(geom.faces, dtype=np.uint32),
                color=color,
                alpha=float(np.clip(extra.get("alpha", 1.0), 0.0, 1.0)),
                texture=texture,
                specular=float(np.clip(extra.get("specular", 0.2), 0.0, 1.0)),
                shininess=float(np.clip(getattr(material, "glossiness", None) or 30.0, 2.0, 200.0)),
            )
        )
    if not mesh.parts:
        raise TextureLoadError(path, "no triangles with materials found")
    _normalise(mesh)
    return mesh


def _has_normals(path: Path) -> bool:
    """Whether an OBJ has ``vn`` lines (read as bytes: no decoding of a large file)."""
    with open(path, "rb") as fh:
        return any(line.startswith(b"vn ") for line in fh)


def _texture_array(image: Image.Image, max_side: int) -> np.ndarray:
    img = image.convert("RGBA")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _normalise(mesh: TexturedMesh) -> None:
    """Centre the bounding box at the origin and scale the farthest vertex to radius 1."""
    allv = np.concatenate([p.positions for p in mesh.parts])
    centre = (allv.min(axis=0) + allv.max(axis=0)) / 2.0
    scale = float(np.linalg.norm(allv - centre, axis=1).max())
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError("cannot normalise a mesh with zero extent")
    for p in mesh.parts:
        p.positions = ((p.positions - centre) / scale).astype(np.float32)
