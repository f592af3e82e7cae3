"""Real background images for the photo domain, from Debian packages.

The photographs among ``plasma-workspace-wallpapers`` (LGPL-3 per wallpaper,
GPL-2+ package) and ``mate-backgrounds`` (GPL-2+ nature photos), and the
floor/wall/sky textures in the ``sweethome3d`` jar (GPL-2+ / CC-BY 3.0), all
fetched with ``apt-get download``; plus studio backdrops drawn on the fly.
Every random choice comes from the generator the caller passes.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ftspl.engine.errors import RenderError

__all__ = ["BACKGROUND_PACKAGE", "KDE_PACKAGE", "KDE_PHOTOS", "Background", "draw_background", "fetch_backgrounds"]

BACKGROUND_PACKAGE = "mate-backgrounds"
KDE_PACKAGE = "plasma-workspace-wallpapers"
_PHOTO_DIR = "usr/share/backgrounds/mate/nature"
_KDE_DIR = "usr/share/wallpapers"
#: The photographs among the KDE wallpapers (the others are drawings and abstract art).
KDE_PHOTOS = (
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
    "OneStandsOut", "Path", "summer_1am",
)
_JAR = "usr/share/sweethome3d/sweethome3d.jar"
_JAR_TEXTURES = "com/eteks/sweethome3d/io/resources/textures/"
_BG_MAX_SIDE = 640  #: backgrounds are cropped at most this large, so keep them decoded at this size


@dataclass(frozen=True)
class Background:
    kind: str  #: photo or texture
    name: str  #: package:path
    credit: str  #: author and licence, for the NOTICE
    image: Image.Image  #: RGB, at most _BG_MAX_SIDE on its longer side (textures tiled first)


def fetch_backgrounds(cache: Path) -> tuple[list[Background], dict[str, str]]:
    """Real background images from Debian packages; returns them and {package: version}.

    The photographs of ``plasma-workspace-wallpapers`` and ``mate-backgrounds``
    and the floor, wall, grass and sky textures of the ``sweethome3d`` jar
    (tiled so a crop looks like a surface, not one tile).
    """
    import json

    from ftspl.data.sh3d import CATALOG_PACKAGE, fetch_package, package_version

    root = fetch_package(cache, BACKGROUND_PACKAGE, _PHOTO_DIR)
    fetch_package(cache, KDE_PACKAGE, f"{_KDE_DIR}/{KDE_PHOTOS[0]}")
    fetch_package(cache, CATALOG_PACKAGE, _JAR)
    out: list[Background] = []
    for name in KDE_PHOTOS:
        folder = root / _KDE_DIR / name
        sizes = sorted(folder.glob("contents/images/*.jpg"), key=lambda p: abs(_width(p) - 1280))
        if not sizes:
            continue
        try:
            author = json.loads((folder / "metadata.json").read_text())["KPlugin"]["Authors"][0]["Name"]
        except (OSError, ValueError, KeyError, IndexError):
            author = "KDE"
        out.append(Background("photo", f"{KDE_PACKAGE}:{name}", f"{author}, LGPL-3", _decoded(sizes[0])))
    for p in sorted((root / _PHOTO_DIR).glob("*.jpg")):
        out.append(Background("photo", f"{BACKGROUND_PACKAGE}:{p.name}", "MATE artwork, GPL-2+", _decoded(p)))
    with zipfile.ZipFile(root / _JAR) as zf:
        for name in sorted(n for n in zf.namelist() if n.startswith(_JAR_TEXTURES) and n.endswith(".jpg")):
            tile = Image.open(io.BytesIO(zf.read(name))).convert("RGB")
            out.append(
                Background(
                    "texture", f"{CATALOG_PACKAGE}:{name.rsplit('/', 1)[1]}", "eTeks, GPL-2+ / CC-BY 3.0", _tiled(tile)
                )
            )
    if not any(b.kind == "photo" for b in out) or not any(b.kind == "texture" for b in out):
        raise RenderError(f"{cache}: background images missing from {BACKGROUND_PACKAGE} / {CATALOG_PACKAGE}")
    versions = {pkg: package_version(cache, pkg) for pkg in (KDE_PACKAGE, BACKGROUND_PACKAGE, CATALOG_PACKAGE)}
    return out, versions


def _width(p: Path) -> int:
    try:
        return int(p.stem.split("x")[0])
    except ValueError:
        return 0


def _decoded(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.draft("RGB", (_BG_MAX_SIDE, _BG_MAX_SIDE))  # JPEG DCT scaling: fast decode of big photos
        rgb = img.convert("RGB")
    rgb.thumbnail((_BG_MAX_SIDE, _BG_MAX_SIDE), Image.Resampling.LANCZOS)
    return rgb


def _tiled(tile: Image.Image, side: int = 512) -> Image.Image:
    """Repeat a texture tile so it covers ``side`` x ``side`` with 3 to 4 repeats."""
    reps = 3
    w, h = tile.size
    scale = side / (reps * max(w, h))
    tile = tile.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    w, h = tile.size
    canvas = Image.new("RGB", (side, side))
    for y in range(0, side, h):
        for x in range(0, side, w):
            canvas.paste(tile, (x, y))
    return canvas


def draw_background(
    kind: str, pool: list[Background], size: int, rng: np.random.Generator, blur: tuple[float, float]
) -> np.ndarray:
    """A (size, size, 3) float32 background in 0..1: a studio backdrop, or a random crop of a
    ``kind`` image from ``pool``, flipped half the time and blurred by a sigma drawn from ``blur``."""
    if kind == "studio":
        # A seamless backdrop: a light, slightly tinted vertical gradient with a vignette.
        top = np.clip(rng.uniform(0.78, 1.0) + rng.normal(0, 0.04, 3), 0, 1)
        bottom = np.clip(top * rng.uniform(0.75, 0.98), 0, 1)
        t = np.linspace(0.0, 1.0, size)[:, None, None]
        img = top * (1 - t) + bottom * t
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        img = img * (1.0 - rng.uniform(0.0, 0.35) * (xx**2 + yy**2))[..., None]
        return np.broadcast_to(img, (size, size, 3)).astype(np.float32)
    choices = [b for b in pool if b.kind == kind] or pool
    bg = choices[int(rng.integers(len(choices)))].image
    w, h = bg.size
    side = int(min(w, h) * rng.uniform(0.35, 1.0))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = bg.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sigma = rng.uniform(*blur)
    if sigma > 0.3:
        crop = crop.filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(crop, dtype=np.float32) / 255.0
