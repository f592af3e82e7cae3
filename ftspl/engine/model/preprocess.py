"""The encoder's input transform (PIL + numpy, torch-free): photo or views -> float32 tensors.

Both the trainer and the engine call :func:`to_tensor`, so a photo becomes the same
array at training and at query time. Its size, crop and mean/std come from the
model's :class:`~ftspl.engine.constants.Preprocess` (the backbone's registry entry,
carried by the manifest), never from constants here. Views rendered at
``image_size`` share only the normalisation (see :func:`views_to_tensor`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ftspl.engine.constants import Preprocess
from ftspl.engine.loading.photos import load_photo, to_rgb


def resize_crop(img: Image.Image, pre: Preprocess) -> Image.Image:
    """Resize the shorter side to ``size / crop_pct`` (bicubic), then centre-crop ``size``."""
    size = pre.image_size
    short = max(size, round(size / pre.crop_pct))
    w, h = img.size
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def normalize(arr_uint8: np.ndarray, pre: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), scaled to 0..1 and standardised.

    Through a 256-entry lookup table per channel, computed with the same float32
    operations as the direct formula, so the result is bit-identical to
    ``((x / 255) - mean) / std`` but faster (one gather per channel instead of
    four passes over float32 arrays). Each channel is gathered straight from the
    interleaved pixels into its plane, without a channels-first copy of the input.
    ``out`` (float32, the result's shape) receives the result, e.g. one shape's
    slot of a batch, so a batch needs no stacking copy.
    """
    arr = np.asarray(arr_uint8, dtype=np.uint8)
    if arr.shape[-1:] != (3,):
        raise ValueError(f"expected (..., H, W, 3) uint8 pixels, got {arr.shape}")
    shape = arr.shape[:-3] + (3,) + arr.shape[-3:-1]
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    levels = np.arange(256, dtype=np.float32)[None, :] * np.float32(1.0 / 255.0)
    lut = (levels - np.asarray(pre.mean, np.float32)[:, None]) / np.asarray(pre.std, np.float32)[:, None]
    for c in range(3):
        np.take(lut[c], arr[..., c], out=out[..., c, :, :])
    return out


def to_tensor(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """One RGB photo -> float32 (3, S, S), ready for the image encoder."""
    return normalize(np.asarray(resize_crop(to_rgb(img), pre), dtype=np.uint8), pre)


def views_to_tensor(views: np.ndarray, pre: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """Rendered views uint8 (V, S, S, 3) -> float32 (V, 3, S, S) (into ``out`` when given).

    Views are rendered at exactly ``image_size`` with the shape filling the
    frame, so they are not resized or cropped (cropping would cut the shape);
    if a pre-rendered view folder has another size it was already resized on
    load. Only the normalisation is shared with photos.
    """
    if views.ndim != 4 or views.shape[-1] != 3 or views.shape[1] != pre.image_size:
        raise ValueError(f"views must be (V, {pre.image_size}, {pre.image_size}, 3), got {views.shape}")
    return normalize(views, pre, out)


def photo_batch(paths: list[Path], pre: Preprocess) -> np.ndarray:
    """Decode and preprocess several photos into one float32 batch (N, 3, S, S)."""
    return np.stack([to_tensor(load_photo(p), pre) for p in paths]) if paths else np.zeros(
        (0, 3, pre.image_size, pre.image_size), np.float32
    )
