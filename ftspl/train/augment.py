"""Photo augmentation for training, on top of the engine's preprocessing.

PIL + numpy with an explicit ``numpy.random.Generator`` so that a seed fixes
every crop and jitter. The final resize/normalise is the engine's
(``ftspl.engine.loading.photos``): a training photo and a query photo become tensors
the same way; only the crop box and colours are randomised here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from ftspl.engine.constants import Preprocess
from ftspl.engine.loading.photos import to_rgb
from ftspl.engine.model.preprocess import normalize, to_tensor


def augment(img: Image.Image, pre: Preprocess, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop (scale 0.5-1, ratio 3/4-4/3), h-flip, colour jitter -> (3, S, S)."""
    img = to_rgb(img)
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(0.5, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:
        cw, ch = min(w, h), min(w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    size = pre.image_size
    img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(0.7, 1.3)))
    return normalize(np.asarray(img, dtype=np.uint8), pre)


def clean(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """The evaluation transform: exactly what ``ftspl query`` does."""
    return to_tensor(img, pre)
