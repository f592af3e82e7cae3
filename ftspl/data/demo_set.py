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

from ftspl.data.sh3d import (
    Sh3dModel,
    extract_icon,
    extract_model,
    fetch_furniture,
    furniture_models,
    notice_text,
)


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


@dataclass(frozen=True)
class SplitConfig:
    """Per-class fractions of a source/query/target split of the furniture models."""

    source: float = 0.4  #: models whose icons are the labelled training photos
    queries: float = 0.2  #: models whose icons are held-out query photos
    min_models: int = 8
    max_faces: int = 150_000
    seed: int = 0


@dataclass
class TransferSplit:
    source: Path  #: source/<class>/<model>.png (labelled photos)
    queries: Path  #: queries/<class>/<model>.png (held out, evaluation only)
    target: Path  #: target/<class>/<model>/<file>.obj (the unlabelled gallery; folder labels for reporting)
    classes: list[str]
    counts: dict[str, int]


def build_transfer_split(out: Path, cache: Path, cfg: SplitConfig = SplitConfig()) -> TransferSplit:
    """Disjoint per-class groups of models: source photos, query photos, target meshes.

    A model is in exactly one group, so no query's own object is in the gallery.
    """
    libdir = fetch_furniture(cache)
    by_class: dict[str, list[Sh3dModel]] = defaultdict(list)
    for m in furniture_models():
        if m.faces <= cfg.max_faces:
            by_class[m.label].append(m)
    classes = sorted(c for c, ms in by_class.items() if len(ms) >= cfg.min_models)
    rng = random.Random(cfg.seed)
    counts = {"source": 0, "queries": 0, "target": 0}
    used: list[Sh3dModel] = []
    for c in classes:
        ms = sorted(by_class[c], key=lambda m: m.key)
        rng.shuffle(ms)
        ns = max(2, int(cfg.source * len(ms)))
        nq = max(1, int(cfg.queries * len(ms)))
        for m in ms[:ns]:
            dest = out / "source" / c / f"{m.key}.png"
            if not dest.exists():
                extract_icon(libdir, m, dest)
        for m in ms[ns : ns + nq]:
            dest = out / "queries" / c / f"{m.key}.png"
            if not dest.exists():
                extract_icon(libdir, m, dest)
        for m in ms[ns + nq :]:
            target = out / "target" / c / m.key
            if not any(target.glob("*.obj")):
                extract_model(libdir, m, target)
        counts["source"] += ns
        counts["queries"] += nq
        counts["target"] += len(ms) - ns - nq
        used += ms
    (out / "NOTICE.txt").write_text(notice_text(used))
    return TransferSplit(out / "source", out / "queries", out / "target", classes, counts)
