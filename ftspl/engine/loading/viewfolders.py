"""Pre-rendered shapes: a folder of view images stands for one shape.

Why: public benchmarks (MVCNN's ModelNet renders, MI3DOR) ship shapes as
folders of ``VIEWS`` pre-rendered images (``chair_0001_001.png`` ...
``chair_0001_012.png`` or ``0.png`` ... ``11.png``) instead of meshes. Indexing
such a folder must give the same ``(V, S, S, 3)`` uint8 array the renderer
produces for a mesh, so the encoder cannot tell the difference.

Rules: a view folder holds exactly ``views`` image files (``.png``, ``.jpg``,
``.jpeg``; hidden files such as ``.DS_Store`` are ignored) and nothing else,
not even sub-folders. Files are ordered naturally (``2`` before ``10``), so
the i-th file is the i-th camera.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ftspl.engine.constants import MAX_IMAGE_PIXELS, VIEWS, RenderSpec
from ftspl.engine.errors import ImageLoadError

log = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "is_view_folder", "load_view_folder", "natural_key", "view_images"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png")

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that compares digit runs as numbers: ``v2.png`` < ``v10.png``.

    ``re.split`` with a capturing group alternates text and digit runs, so two
    keys always hold the same type at the same position and compare cleanly.
    """
    parts = _DIGITS.split(name.lower())
    # The raw name breaks ties ("v01" vs "v1") so the order is total and stable.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _visible_entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def view_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, naturally sorted."""
    folder = Path(folder)
    images = [p for p in _visible_entries(folder) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(images, key=lambda p: natural_key(p.name))


def is_view_folder(path: str | Path, views: int = VIEWS) -> bool:
    """True when ``path`` is a folder holding exactly ``views`` images and nothing else."""
    path = Path(path)
    try:
        if not path.is_dir():
            return False
        entries = _visible_entries(path)
    except OSError:  # unreadable folder: not ours to claim; the scanner reports it
        return False
    if len(entries) != views:
        return False
    return all(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries)


def _load_view(path: Path, size: int, max_pixels: int) -> np.ndarray:
    """Decode one view to uint8 (size, size, 3): alpha over white, padded square, resized."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    path, f"image is {width}x{height} pixels, over the limit of {max_pixels}; downscale it"
                )
            image.load()
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(path, f"cannot decode image ({exc})") from exc
    # Truncated/corrupt data surfaces from Pillow's decoders as OSError,
    # SyntaxError (PNG chunk parser) or ValueError.
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(path, f"corrupt or unreadable image ({exc})") from exc
    # Transparent view renders are drawn on white, like the mesh renderer's background.
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
    if rgb.width != rgb.height:  # keep the aspect ratio: pad to a white square
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        rgb = square
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def load_view_folder(
    path: str | Path, spec: RenderSpec = RenderSpec(), max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Load a view folder as uint8 ``(spec.views, S, S, 3)``, views in natural name order.

    Raises :class:`ImageLoadError` if the folder does not hold exactly
    ``spec.views`` images or one of them cannot be decoded or is too large.
    """
    path = Path(path)
    try:
        images = view_images(path)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot list view folder ({exc.strerror or exc})") from exc
    if len(images) != spec.views:
        raise ImageLoadError(
            path, f"view folder holds {len(images)} images, expected {spec.views} (one per camera)"
        )
    size = spec.image_size
    out = np.empty((spec.views, size, size, 3), dtype=np.uint8)
    for i, image_path in enumerate(images):
        out[i] = _load_view(image_path, size, max_pixels)
    log.debug("loaded view folder %s (%d views)", path, spec.views)
    return out
