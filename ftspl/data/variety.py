"""Photo-domain variety: named presets that widen the labelled training photos, and their effects.

The benchmark's labelled "photos" are renders (:mod:`ftspl.data.photo_domain`); the
hidden real photographs they stand in for have other furniture in the frame,
materials in other colours, off-centre close framing, vignetting, motion blur,
white-balance errors and low resolution. Each preset of :data:`PHOTO_VARIETY`
switches on one family of :class:`~ftspl.data.photo_domain.PhotoConfig` knobs, more
renders per model, or scene photos (:mod:`ftspl.data.scenes`: the model in a
furnished room among other source models) for the **source** photos only: val/
and queries/ keep the base settings, so every variety is scored on the very same
images.

The image-space effects the knobs enable live here too (occluders, the material
colour transform, vignetting, white balance, motion blur, downscale-upscale);
every random draw comes from the generator the caller passes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from PIL import Image, ImageFilter

from ftspl.engine.errors import UnknownKeyError

if TYPE_CHECKING:
    from ftspl.data.backgrounds import Background


class PhotoConfig(Protocol):
    """The variety knobs of :class:`ftspl.data.photo_domain.PhotoConfig` that the effects here read.

    A protocol rather than an import: ``photo_domain`` imports the effects from
    this module, so this module must not import it back.
    """

    material_prob: float
    material_hue: float
    material_saturation: tuple[float, float]
    material_albedo: tuple[float, float]
    clutter: tuple[int, int]
    clutter_object: float
    clutter_front: float
    clutter_scale: tuple[float, float]
    clutter_max_cover: float
    vignette: tuple[float, float]
    white_balance: float
    motion_blur_prob: float
    motion_blur_px: tuple[float, float]
    lowres_prob: float
    lowres_scale: tuple[float, float]


class _HasPhotos(Protocol):
    """What :func:`apply_variety` changes in a :class:`ftspl.data.bench.BenchConfig` (a dataclass)."""

    photo: Any
    source_photo: Any
    source_renders: int | None
    source_scenes: int


#: :func:`apply_variety` returns the type it is given (a BenchConfig)
BenchConfig = TypeVar("BenchConfig", bound=_HasPhotos)

__all__ = [
    "PHOTO_VARIETY",
    "VARIETY_FIELDS",
    "apply_variety",
    "colour_matrix",
    "composite_occluders",
    "downscale_upscale",
    "draw_material",
    "lens_faults",
    "motion_blur",
    "paint_over",
    "sensor_faults",
    "vignette",
    "white_balance",
]

#: The PhotoConfig knobs added for variety; a manifest leaves them out while at their defaults.
VARIETY_FIELDS = (
    "material_prob", "material_hue", "material_saturation", "material_albedo", "clutter", "clutter_object",
    "clutter_front", "clutter_scale", "clutter_max_cover", "vignette", "white_balance", "motion_blur_prob",
    "motion_blur_px", "lowres_prob", "lowres_scale",
)

_CLUTTER = {"clutter": (0, 3)}
_MATERIALS = {"material_prob": 0.7}
_CAMERA = {
    "fov_deg": (25.0, 75.0),  # wider lenses: stronger perspective
    "fill": (0.75, 1.3),  # closer framing: parts of the object leave the frame
    "offset": 0.15,  # off-centre
    "roll_deg": 8.0,
    "light_intensity": (0.35, 1.25),  # harder and dimmer key lights
    "ambient": (0.2, 0.6),
    "vignette": (0.0, 0.5),
    "white_balance": 0.12,
    "blur_prob": 0.4,
    "blur_sigma": (0.3, 1.8),  # defocus
    "motion_blur_prob": 0.2,
    "noise_sigma": (0.0, 10.0),
    "lowres_prob": 0.3,
    "jpeg_quality": (30, 95),
}

#: name -> {"photo": PhotoConfig overrides, "renders": renders per source model, "scenes": scene
#: photos per source model added to its renders}, applied to the source photos only
#: (:func:`apply_variety`); ``base`` is today's benchmark. ``scenes`` is also how many scene
#: photos per val model ``ftspl data sh3d --scenes`` writes to val_scenes/.
PHOTO_VARIETY: dict[str, dict] = {
    "base": {},
    "clutter": {"photo": _CLUTTER},
    "materials": {"photo": _MATERIALS},
    "camera": {"photo": _CAMERA},
    "more_renders": {"renders": 8},
    "all": {"photo": {**_CLUTTER, **_MATERIALS, **_CAMERA}, "renders": 8},
    "scenes": {"scenes": 4},
}


#: bench preset -> the variety its source photos get unless told otherwise (``ftspl data sh3d``,
#: the benchmark scripts). ``full``: ``more_renders``, which benchmarks/photo_variety.py's rule
#: (best mean val FT of FTSPL on the tuning seeds) chose over ``base`` (photo_variety.json:
#: +0.024 FT [+0.001, +0.049] on seeds 0-1; photo_variety_renders.json: +0.009 on seeds 2-4).
#: ``small`` stays ``base``: it is the minute-long demo build, and no study ran on it.
DEFAULT_VARIETY: dict[str, str] = {"full": "more_renders", "small": "base"}


def apply_variety(cfg: BenchConfig, name: str) -> BenchConfig:
    """``cfg`` with the source photos widened by preset ``name`` (``base``: ``cfg`` unchanged).

    Only ``source_photo`` / ``source_renders`` / ``source_scenes`` change, so the split, the
    gallery and the val/query photos stay those of ``cfg``.
    """
    if name not in PHOTO_VARIETY:
        raise UnknownKeyError("variety", name, PHOTO_VARIETY)
    spec = PHOTO_VARIETY[name]
    out = cfg
    if spec.get("photo"):
        out = replace(out, source_photo=replace(cfg.source_photo or cfg.photo, **spec["photo"]))
    if "renders" in spec:
        out = replace(out, source_renders=int(spec["renders"]))
    if "scenes" in spec:
        out = replace(out, source_scenes=int(spec["scenes"]))
    return out


# -- materials ------------------------------------------------------------------------------
_LUMA = np.array([0.299, 0.587, 0.114])


def colour_matrix(hue_turns: float, saturation: float, albedo: float) -> np.ndarray:
    """A 3x3 RGB transform: rotate the hue about the grey axis, scale saturation, then brightness.

    Linear, so the shader applies it to texture maps and flat colours alike (patterns kept).
    """
    a = 2.0 * math.pi * hue_turns
    k = np.ones((3, 3)) / 3.0
    cross = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    rot = math.cos(a) * np.eye(3) + math.sin(a) * cross + (1.0 - math.cos(a)) * k  # Rodrigues about (1,1,1)
    sat = saturation * np.eye(3) + (1.0 - saturation) * np.tile(_LUMA, (3, 1))
    return albedo * sat @ rot


def draw_material(rng: np.random.Generator, cfg: PhotoConfig) -> np.ndarray | None:
    """One part's colour transform for one photo, or None (its own colours): with probability
    ``cfg.material_prob`` a hue rotation, a log-uniform saturation scale and an albedo scale."""
    if rng.random() >= cfg.material_prob:
        return None
    hue = rng.uniform(-cfg.material_hue, cfg.material_hue)
    lo, hi = cfg.material_saturation
    sat = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return colour_matrix(hue, sat, rng.uniform(*cfg.material_albedo))


# -- clutter --------------------------------------------------------------------------------
def _patch(pool: list[Background], h: int, rng: np.random.Generator) -> np.ndarray:
    """A real-image occluder: a crop of a pool image under a soft ellipse or rounded box, premultiplied RGBA."""
    w = max(4, round(h * rng.uniform(0.5, 1.5)))
    src = pool[int(rng.integers(len(pool)))].image
    side = int(min(src.size) * rng.uniform(0.15, 0.5))
    x0, y0 = int(rng.integers(0, src.size[0] - side + 1)), int(rng.integers(0, src.size[1] - side + 1))
    rgb = np.asarray(src.crop((x0, y0, x0 + side, y0 + side)).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = (xx + 0.5) / w * 2 - 1, (yy + 0.5) / h * 2 - 1
    p = 2.0 if rng.random() < 0.5 else float(rng.uniform(4.0, 8.0))  # ellipse or rounded box
    mask = Image.fromarray(((np.abs(u) ** p + np.abs(v) ** p) <= 1.0).astype(np.uint8) * 255, "L")
    mask = mask.filter(ImageFilter.GaussianBlur(max(0.5, 0.02 * h)))
    alpha = np.asarray(mask, np.float32)[..., None] / 255.0
    return np.concatenate([rgb / 255.0 * alpha, alpha], axis=-1)


def _scaled(cut: np.ndarray, h: int) -> np.ndarray:
    """A premultiplied RGBA cutout resized to height ``h`` (band by band: no halo)."""
    w = max(2, round(cut.shape[1] * h / cut.shape[0]))
    bands = [Image.fromarray(np.ascontiguousarray(cut[..., i]), "F").resize((w, h), Image.Resampling.BILINEAR)
             for i in range(4)]
    return np.clip(np.stack([np.asarray(b) for b in bands], axis=-1), 0.0, 1.0)


def composite_occluders(
    bg: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, cfg: PhotoConfig, pool: list[Background],
    cutouts: list[np.ndarray],
) -> tuple[np.ndarray, list[tuple[np.ndarray, int, int]]]:
    """Place occluders (a number drawn from ``cfg.clutter``) near the object: those behind are painted into ``bg`` now; those in
    front are returned as ``(rgba, y, x)`` layers for the caller to paint over the composite.

    An occluder is another catalogue object's cutout (probability ``cfg.clutter_object``, when
    ``cutouts`` has any) or a real-image patch; one in front never hides more than
    ``cfg.clutter_max_cover`` of the object (up to five placements are tried, else it is dropped).
    """
    size = bg.shape[0]
    count = int(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1))
    ys, xs = np.nonzero(alpha[..., 0] > 0.05)
    if len(ys) == 0:
        return bg, []
    box = (ys.min(), ys.max(), xs.min(), xs.max())
    obj_area = float(alpha.sum())
    front: list[tuple[np.ndarray, int, int]] = []
    bg = bg.copy()
    for _ in range(count):
        h = max(8, round(size * rng.uniform(*cfg.clutter_scale)))
        if cutouts and rng.random() < cfg.clutter_object:
            occ = _scaled(cutouts[int(rng.integers(len(cutouts)))], h)
        else:
            occ = _patch(pool, h, rng)
        in_front = rng.random() < cfg.clutter_front
        blur = rng.uniform(0.0, 1.5)
        if blur > 0.3:  # out of the focal plane
            bands = [Image.fromarray((occ[..., i] * 255 + 0.5).astype(np.uint8), "L") for i in range(4)]
            occ = np.stack([np.asarray(b.filter(ImageFilter.GaussianBlur(blur)), np.float32) / 255.0
                            for b in bands], axis=-1)
        oh, ow = occ.shape[:2]
        for _try in range(5):
            # centre on a point of the object's box grown by half the occluder: overlapping or beside it
            cy = rng.uniform(box[0] + 0.3 * (box[1] - box[0]), box[1] + oh / 2)  # rather low: on the floor
            cx = rng.uniform(box[2] - ow / 2, box[3] + ow / 2)
            y, x = round(cy - oh / 2), round(cx - ow / 2)
            if not in_front:
                break
            cover = float((_paste(np.zeros((size, size, 1), np.float32), occ[..., 3:], y, x) * alpha).sum())
            if cover <= cfg.clutter_max_cover * obj_area:
                break
        else:
            continue
        if in_front:
            front.append((occ, y, x))
        else:
            bg = paint_over(bg, occ, y, x)
    return bg, front


def paint_over(img: np.ndarray, occ: np.ndarray, y: int, x: int) -> np.ndarray:
    """``img`` (float RGB) with the premultiplied RGBA ``occ`` composited over it at (y, x)."""
    layer = _paste(np.zeros((*img.shape[:2], 4), np.float32), occ, y, x)
    return layer[..., :3] + img * (1.0 - layer[..., 3:])


def _paste(canvas: np.ndarray, img: np.ndarray, y: int, x: int) -> np.ndarray:
    """``img`` written into ``canvas`` at (y, x), clipped to the frame."""
    H, W = canvas.shape[:2]
    h, w = img.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y0 < y1 and x0 < x1:
        canvas[y0:y1, x0:x1] = img[y0 - y : y1 - y, x0 - x : x1 - x]
    return canvas


# -- lens and sensor --------------------------------------------------------------------------
def lens_faults(photo: np.ndarray, rng: np.random.Generator, cfg: PhotoConfig) -> np.ndarray:
    """White-balance error and vignetting on the float composite, where ``cfg`` enables them."""
    if cfg.white_balance > 0:
        photo = white_balance(photo, rng, cfg.white_balance)
    if cfg.vignette[1] > 0:
        photo = vignette(photo, rng.uniform(*cfg.vignette))
    return photo


def sensor_faults(out: Image.Image, rng: np.random.Generator, cfg: PhotoConfig) -> Image.Image:
    """Camera shake and a downscale-upscale after the lens blur, where ``cfg`` enables them."""
    if cfg.motion_blur_prob > 0 and rng.random() < cfg.motion_blur_prob:
        arr = motion_blur(np.asarray(out, dtype=np.float32), rng, cfg.motion_blur_px)
        out = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    if cfg.lowres_prob > 0 and rng.random() < cfg.lowres_prob:
        out = downscale_upscale(out, rng, cfg.lowres_scale)
    return out


def vignette(img: np.ndarray, strength: float) -> np.ndarray:
    """Darken towards the corners: ``1 - strength * r^2`` with r = 1 at a corner."""
    n = img.shape[0]
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / n - 0.5
    return img * (1.0 - strength * (xx**2 + yy**2) / 0.5)[..., None]


def white_balance(img: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    """A white-balance error: red and blue gains drawn in ``1 +- spread`` against green."""
    gains = np.array([1.0 + rng.uniform(-spread, spread), 1.0, 1.0 + rng.uniform(-spread, spread)])
    return img * gains


def motion_blur(img: np.ndarray, rng: np.random.Generator, length: tuple[float, float]) -> np.ndarray:
    """A straight camera-shake streak: the mean of copies shifted along a random direction."""
    n_px = rng.uniform(*length)
    angle = rng.uniform(0.0, math.pi)
    steps = max(2, math.ceil(n_px))
    pad = math.ceil(n_px / 2) + 1
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    acc = np.zeros_like(img, dtype=np.float32)
    for t in np.linspace(-n_px / 2, n_px / 2, steps):
        dy, dx = round(t * math.sin(angle)), round(t * math.cos(angle))
        acc += padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return acc / steps


def downscale_upscale(img: Image.Image, rng: np.random.Generator, scale: tuple[float, float]) -> Image.Image:
    """A small sensor or a thumbnail blown up: down by a factor drawn from ``scale``, back up bilinearly."""
    n = img.size[0]
    small = max(8, round(n * rng.uniform(*scale)))
    return img.resize((small, small), Image.Resampling.BOX).resize((n, n), Image.Resampling.BILINEAR)
