"""The photo domain's settings: the ranges every random choice of a benchmark photo is drawn from.

:class:`PhotoConfig` is read by the renderer (:mod:`ftspl.data.photo_domain`,
which re-exports it), the scene renderer (:mod:`ftspl.data.scenes`), the
benchmark build (:mod:`ftspl.data.bench`, :mod:`ftspl.data.buildfiles`, which
records its values) and, through a protocol, the variety effects
(:mod:`ftspl.data.variety`). It has a module of its own because it is plain
data: reading or recording the settings needs no renderer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PhotoConfig:
    """Ranges of the photo domain's random choices (uniform unless said otherwise)."""

    image_size: int = 256
    supersample: float = 1.5  #: render this much larger, then downscale (softer edges, like a lens)
    msaa: int = 4
    front_bias: float = 0.75  #: probability that the azimuth is drawn around the front (N(0, 40 deg))
    front_sigma_deg: float = 40.0
    elevation_deg: tuple[float, float] = (-5.0, 35.0)
    fov_deg: tuple[float, float] = (25.0, 55.0)
    fill: tuple[float, float] = (0.7, 1.0)  #: bounding-sphere diameter / frame height
    offset: float = 0.06  #: largest shift of the object's centre, in frame heights
    roll_deg: float = 4.0
    light_elevation_deg: tuple[float, float] = (20.0, 75.0)
    light_intensity: tuple[float, float] = (0.55, 1.0)
    ambient: tuple[float, float] = (0.35, 0.6)
    #: background kind -> probability: a photo, a tiled floor/wall texture, a studio backdrop
    background_mix: tuple[tuple[str, float], ...] = (("photo", 0.35), ("texture", 0.3), ("studio", 0.35))
    background_blur: tuple[float, float] = (0.0, 2.5)  #: depth of field, in output pixels
    shadow_prob: float = 0.7
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.3
    hue: float = 0.03  #: largest hue rotation, in turns
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise_sigma: tuple[float, float] = (0.0, 5.0)  #: sensor noise, 0-255 scale
    jpeg_quality: tuple[int, int] = (50, 95)
    # -- variety knobs (presets in ftspl.data.variety); at these defaults nothing is drawn for
    # them, so the photos stay byte-identical to those made before the knobs existed --
    #: probability that one part's material is recoloured: a hue rotation, a saturation and an
    #: albedo (brightness) scale, drawn per part and applied to its texture map too (patterns kept)
    material_prob: float = 0.0
    material_hue: float = 0.5  #: largest hue rotation of a recoloured part, in turns (0.5: any hue)
    material_saturation: tuple[float, float] = (0.4, 1.6)
    material_albedo: tuple[float, float] = (0.55, 1.25)
    #: occluders per photo (an integer drawn uniformly from this range): other catalogue
    #: objects or real-image patches, in front of or behind the object; (0, 0): none
    clutter: tuple[int, int] = (0, 0)
    clutter_object: float = 0.7  #: probability that an occluder is a catalogue object (else an image patch)
    clutter_front: float = 0.6  #: probability that an occluder is in front of the object (else behind it)
    clutter_scale: tuple[float, float] = (0.25, 0.6)  #: occluder height, in frame heights
    clutter_max_cover: float = 0.4  #: the largest fraction of the object one occluder in front may hide
    vignette: tuple[float, float] = (0.0, 0.0)  #: darkening at the corners (lens falloff); (0, 0): none
    white_balance: float = 0.0  #: largest red/blue gain error against green (0.1: gains 0.9-1.1)
    motion_blur_prob: float = 0.0  #: probability of a camera-shake streak
    motion_blur_px: tuple[float, float] = (2.0, 8.0)  #: its length, in output pixels
    lowres_prob: float = 0.0  #: probability of a downscale-upscale (a small sensor, a blown-up thumbnail)
    lowres_scale: tuple[float, float] = (0.3, 0.7)  #: the intermediate size, as a fraction of image_size
