"""What the Sweet Home 3D catalogues say about each model and texture: real sizes, orientation, tiles.

A scene (:mod:`ftspl.data.scenes`) puts several catalogue models in one room,
so each must have its real size and stand the right way up. The furniture
catalogues (``PluginFurnitureCatalog.properties`` in every ``.sh3f`` library,
``DefaultFurnitureCatalog.properties`` in the jar) give, per ``#N`` entry, the
model's width, depth and height in centimetres after its ``modelRotation``
(a row-major 3x3 matrix), its elevation above the floor, the height where
objects dropped on it rest, and whether it is a door or a window; the textures
catalogue (``DefaultTexturesCatalog.properties``) gives each floor and wall
texture's category and the real size of one tile. Sweet Home 3D places a model
the same way: rotate, scale the bounding box to width x height x depth, front
towards +Z.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ftspl.data.sh3d import CATALOG_PACKAGE, DataFetchError, Sh3dModel, archive_path

__all__ = ["CatalogueSize", "Texture", "catalogue_sizes", "parse_properties", "room_textures"]

_PLUGIN = "PluginFurnitureCatalog.properties"
_DEFAULT = "com/eteks/sweethome3d/io/DefaultFurnitureCatalog.properties"
_TEXTURES = "com/eteks/sweethome3d/io/DefaultTexturesCatalog.properties"
_KEY = re.compile(r"([^=:\s]+)\s*[=:]\s*(.*)")


@dataclass(frozen=True)
class CatalogueSize:
    """A model as its catalogue places it, in metres."""

    width: float  #: along X (left-right, seen from the front)
    height: float  #: along Y (up)
    depth: float  #: along Z (front-back)
    elevation: float = 0.0  #: bottom above the floor (a radiator, a sink, a window)
    drop_on_top: float | None = None  #: height where an object put on it rests; None: nothing goes on it
    rotation: tuple[float, ...] | None = None  #: modelRotation, row-major 3x3; None: identity
    door_or_window: bool = False

    def rotation_matrix(self) -> np.ndarray:
        if self.rotation is None:
            return np.eye(3)
        return np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)


@dataclass(frozen=True)
class Texture:
    """A floor or wall texture of the jar: one tile and its real size."""

    name: str
    category: str  #: Floor, Wall or Sky
    tile: Image.Image  #: RGB
    width: float  #: metres one tile covers along u
    height: float  #: ... along v


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` pairs of a Java ``.properties`` text (comments, continuation lines, ``\\uXXXX``)."""
    out: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        m = _KEY.match(line)
        if m:
            out[m.group(1)] = re.sub(r"\\u([0-9a-fA-F]{4})", lambda u: chr(int(u.group(1), 16)), m.group(2)).strip()
    return out


def _number(props: dict[str, str], key: str) -> float | None:
    try:
        return float(props[key])
    except (KeyError, ValueError):
        return None


def catalogue_sizes(libdir: Path, models: list[Sh3dModel]) -> dict[str, CatalogueSize]:
    """``model.key -> CatalogueSize`` for the models whose catalogue entry names their OBJ and gives a size.

    A model whose entry is missing or has another OBJ path is left out (the caller decides what
    to do without a size). Raises :class:`DataFetchError` when an archive cannot be read.
    """
    tables: dict[Path, dict[str, str]] = {}
    out: dict[str, CatalogueSize] = {}
    for m in models:
        zpath = archive_path(libdir, m)
        if zpath not in tables:
            member = _DEFAULT if m.source.startswith(CATALOG_PACKAGE + ":") else _PLUGIN
            try:
                with zipfile.ZipFile(zpath) as zf:
                    tables[zpath] = parse_properties(zf.read(member).decode("latin-1"))
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                raise DataFetchError(f"{zpath}: cannot read the catalogue {member} ({exc})") from None
        props, n = tables[zpath], m.catalog_id
        if props.get(f"model#{n}", "").lstrip("/") != m.model_path:
            continue
        w, h, d = (_number(props, f"{k}#{n}") for k in ("width", "height", "depth"))
        if not (w and h and d and w > 0 and h > 0 and d > 0):
            continue
        drop = _number(props, f"dropOnTopElevation#{n}")
        rot = props.get(f"modelRotation#{n}", "").split()
        out[m.key] = CatalogueSize(
            width=w / 100.0, height=h / 100.0, depth=d / 100.0,
            elevation=(_number(props, f"elevation#{n}") or 0.0) / 100.0,
            drop_on_top=drop / 100.0 if drop is not None and drop > 0 else None,
            rotation=tuple(float(x) for x in rot) if len(rot) == 9 else None,
            door_or_window=props.get(f"doorOrWindow#{n}", "false").lower() == "true",
        )
    return out


def room_textures(libdir: Path) -> list[Texture]:
    """The jar's floor and wall textures (its textures catalogue), each one tile with its real size."""
    jar = Path(libdir).parent / "sweethome3d.jar"
    try:
        with zipfile.ZipFile(jar) as zf:
            props = parse_properties(zf.read(_TEXTURES).decode("latin-1"))
            out = []
            for key, image in sorted(props.items()):
                if not key.startswith("image#"):
                    continue
                n = key.split("#", 1)[1]
                cat, w, h = props.get(f"category#{n}", ""), _number(props, f"width#{n}"), _number(props, f"height#{n}")
                if cat not in ("Floor", "Wall") or not (w and h):
                    continue
                tile = Image.open(io.BytesIO(zf.read(image.lstrip("/")))).convert("RGB")
                out.append(Texture(image.rsplit("/", 1)[-1].rsplit(".", 1)[0], cat, tile, w / 100.0, h / 100.0))
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DataFetchError(f"{jar}: cannot read the textures catalogue ({exc})") from None
    if not any(t.category == "Floor" for t in out) or not any(t.category == "Wall" for t in out):
        raise DataFetchError(f"{jar}: no floor or wall textures in {_TEXTURES}")
    return out
