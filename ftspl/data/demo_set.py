"""The demo's data: a gallery of real meshes and held-out photo-like query images.

Per class (classes with enough models in ``sweethome3d-furniture``), a seeded
shuffle splits the models into gallery meshes (indexed, labelled by their class
folder) and query models whose catalogue icons (product renderings with
materials and textures, unlike our grey gallery views) are the query photos.
A query's own model is never in the gallery: category-level retrieval, as in
the paper.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ftspl.data.sh3d import Sh3dModel, extract_icon, extract_model, fetch_furniture, furniture_models, notice_text


@dataclass(frozen=True)
class DemoSetConfig:
    per_class_gallery: int = 5
    per_class_queries: int = 2
    min_models: int = 8
    max_faces: int = 150_000  #: keep the demo quick: skip the heaviest models
    seed: int = 0


@dataclass
class DemoSet:
    gallery: Path  #: gallery/<class>/<model>/<file>.obj
    photos: Path  #: photos/<class>/<model>.png
    classes: list[str]
    n_gallery: int
    n_photos: int
    notice: Path


def build_demo_set(out: Path, cache: Path, cfg: DemoSetConfig = DemoSetConfig()) -> DemoSet:
    """Fetch (once) and lay out the demo's gallery and query photos under ``out``."""
    libdir = fetch_furniture(cache)
    by_class: dict[str, list[Sh3dModel]] = defaultdict(list)
    for m in furniture_models():
        if m.faces <= cfg.max_faces:
            by_class[m.label].append(m)
    need = cfg.per_class_gallery + cfg.per_class_queries
    classes = sorted(c for c, ms in by_class.items() if len(ms) >= max(cfg.min_models, need))
    rng = random.Random(cfg.seed)
    gallery, photos = out / "gallery", out / "photos"
    used: list[Sh3dModel] = []
    n_g = n_p = 0
    for c in classes:
        ms = sorted(by_class[c], key=lambda m: m.key)
        rng.shuffle(ms)
        for m in ms[: cfg.per_class_gallery]:
            target = gallery / c / m.key
            if not any(target.glob("*.obj")):
                extract_model(libdir, m, target)
            used.append(m)
            n_g += 1
        for m in ms[cfg.per_class_gallery : need]:
            dest = photos / c / f"{m.key}.png"
            if not dest.exists():
                extract_icon(libdir, m, dest)
            used.append(m)
            n_p += 1
    notice = out / "NOTICE.txt"
    notice.write_text(notice_text(used))
    return DemoSet(gallery, photos, classes, n_g, n_p, notice)
