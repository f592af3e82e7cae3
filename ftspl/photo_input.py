"""Photos as the Python API takes them: a path, a PIL image or an RGB array; and the ``box`` crop.

Paths go through :func:`ftspl.engine.loading.photos.load_photo` (the byte and
pixel caps, EXIF orientation, alpha on white), so the API refuses exactly what
``ftspl query`` refuses. A ``box`` crops the photo before it is embedded: four
numbers ``x0, y0, x1, y1``, in pixels, or as fractions of the width and height
when all four are floats from 0 to 1. A box outside the photo, empty or
inverted is a :class:`~ftspl.engine.errors.UsageError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftspl.engine.errors import ImageLoadError, UsageError
from ftspl.results import Region

BOX_RULE = ("box is X0,Y0,X1,Y1: pixels inside the photo, or fractions from 0 to 1 of its width and height, "
            "with X0 < X1 and Y0 < Y1")


def parse_box(text: str) -> tuple[float, ...]:
    """``"X0,Y0,X1,Y1"`` (the CLI's ``--box``, the HTTP ``box`` field) as four numbers."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 4:
            raise ValueError
        return tuple(int(p) if p.lstrip("-").isdigit() else float(p) for p in parts)
    except ValueError:
        raise UsageError(f"{BOX_RULE}; got {str(text)[:60]!r}") from None


def box_region(box: Sequence[float], width: int, height: int) -> Region:
    """The pixel region of ``box`` in a ``width`` x ``height`` photo, or UsageError (one line)."""
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise UsageError(f"{BOX_RULE}; got {box!r}") from None
    if len(vals) != 4 or any(v != v for v in vals):  # NaN is never equal to itself
        raise UsageError(f"{BOX_RULE}; got {box!r}")
    fractions = all(isinstance(v, float) for v in box) and all(0.0 <= v <= 1.0 for v in vals)
    if fractions:
        vals = [vals[0] * width, vals[1] * height, vals[2] * width, vals[3] * height]
    x0, y0, x1, y1 = (int(round(v)) for v in vals)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UsageError(f"{BOX_RULE}; got {tuple(box)} for a {width}x{height} photo")
    return Region(x0, y0, x1, y1)


def to_image(photo: Any, index: int, max_pixels: int, max_bytes: int, pixels_flag: str = "",
             bytes_flag: str = "") -> tuple[Any, str]:
    """``(RGB PIL image, name)`` for a path, a PIL image or an ``HxW`` / ``HxWx3`` / ``HxWx4`` uint8 array."""
    from PIL import Image

    from ftspl.engine.loading.photos import load_photo, to_rgb

    if isinstance(photo, (str, Path)):
        return load_photo(photo, max_pixels=max_pixels, max_bytes=max_bytes, pixels_flag=pixels_flag,
                          bytes_flag=bytes_flag), str(photo)
    name = f"image-{index + 1}"
    if isinstance(photo, Image.Image):
        img = photo
    elif hasattr(photo, "__array_interface__") or hasattr(photo, "__array__"):
        import numpy as np

        arr = np.asarray(photo)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise UsageError(f"{name}: an array photo must be uint8 of shape HxW, HxWx3 (RGB) or HxWx4 (RGBA); "
                             f"got {arr.dtype} {arr.shape}")
        img = Image.fromarray(arr)
    else:
        raise UsageError(f"{name}: a photo is a path, a PIL image or a uint8 array, not {type(photo).__name__}")
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageLoadError(name, "image has no pixels")
    if w * h > max_pixels:
        raise ImageLoadError(name, f"image is {w}x{h} pixels, over the {max_pixels}-pixel limit")
    return to_rgb(img), name


def crop(img: Any, box: Sequence[float] | None) -> tuple[Any, Region | None]:
    """The photo cut to ``box`` and its region (None and the photo itself without a box)."""
    if box is None:
        return img, None
    region = box_region(box, *img.size)
    return img.crop((region.x0, region.y0, region.x1, region.y1)), region


__all__ = ["BOX_RULE", "box_region", "crop", "parse_box", "to_image"]
