"""The SH3D benchmark: labelled photo-domain images and an unlabelled shape gallery.

Per class (those with at least ``min_models`` curated models) a seeded
permutation splits the models into disjoint groups:

* ``source`` -- photo renders (:mod:`ftspl.data.photo_domain`) + the catalogue
  icon of each model: the labelled training photos;
* ``val`` -- the same for a few *source* models held out for tuning, so a
  study never has to look at the queries;
* ``queries`` -- the same for held-out models: evaluation only;
  ``BenchConfig.source_photo`` / ``source_renders`` (set by the
  :mod:`ftspl.data.variety` presets) change the source photos only;
* ``target`` -- the meshes (OBJ + MTL + textures) of the remaining models: the
  unlabelled gallery, rendered by the engine as plain grey views;
* ``val_gallery`` -- the meshes of the ``source`` models: the labelled gallery
  the ``val`` photos rank while tuning, so tuning never reads the labels of the
  reported ``target`` gallery (:mod:`ftspl.data.protocol` holds the roles, and
  the manifest records them);
* ``val_scenes`` (``val_scenes`` > 0) -- scene photos of the val models in
  furnished rooms among source models, a second tuning set; ``source_scenes``
  adds scene photos of the source models to ``source`` (:mod:`ftspl.data.scene_build`).

A model is in exactly one group, so no query's own object is ever in the
gallery (category-level retrieval, as in the paper). Every random draw comes
from a generator seeded by ``(seed, class)`` for the split and
``(seed, model)`` for a model's photos, so a build is reproducible and one
model's images do not depend on which other models were built.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ftspl.data.backgrounds import fetch_backgrounds
from ftspl.data.buildfiles import GROUPS, MANIFEST_VERSION, PHOTO_GROUPS
from ftspl.data.buildfiles import config_record as _config_record
from ftspl.data.buildfiles import link_from as _link_from
from ftspl.data.buildfiles import reuse_or_reset as _reuse_or_reset
from ftspl.data.photo_domain import PhotoConfig, PhotoRenderer
from ftspl.data.protocol import manifest_record
from ftspl.data.room import SceneConfig
from ftspl.data.scene_build import SCENE_FOLDER, SIDECAR, build_scene_photos
from ftspl.data.sh3d import (
    CATALOG_PACKAGE,
    FURNITURE_PACKAGE,
    DataFetchError,
    Sh3dModel,
    all_models,
    extract_icon,
    extract_model,
    fetch_sources,
    notice_text,
    package_version,
)
from ftspl.data.textured import TextureLoadError, load_textured_mesh
from ftspl.data.variety import DEFAULT_VARIETY, apply_variety
from ftspl.engine.errors import UnknownKeyError, UsageError
from ftspl.engine.files import atomic_write_bytes

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BenchConfig:
    """What to build; the whole object is recorded in the manifest."""

    seed: int = 0
    renders: int = 4  #: photo renders per source/val/query model
    icons: bool = True  #: also copy each photo model's catalogue icon (a real product rendering)
    min_models: int = 8  #: classes with fewer curated models (after max_faces) are left out
    max_faces: int = 150_000  #: skip the heaviest models (render/index time)
    max_per_class: int | None = None  #: cap models per class (a seeded pick), for a small build
    max_classes: int | None = None  #: keep only the N largest classes
    source: float = 0.4  #: fraction of a class's models that are source (at least 2)
    queries: float = 0.2  #: fraction that are queries (at least 1); the rest is target (at least 1)
    val: float = 0.25  #: fraction of the source models moved to val/ (at least 1 of >= 3; 0: none)
    image_size: int = 256
    photo: PhotoConfig = field(default_factory=PhotoConfig)
    #: settings of the source photos only (the labelled training photos; ``ftspl.data.variety``
    #: presets widen them); None: ``photo``. val/ and queries/ always use ``photo``, so every
    #: variety of a seed is scored on the same images.
    source_photo: PhotoConfig | None = None
    source_renders: int | None = None  #: renders per source model; None: ``renders``
    source_scenes: int = 0  #: scene photos per source model added to source/ (the ``scenes`` variety)
    val_scenes: int = 0  #: scene photos per val model in val_scenes/ (``ftspl data sh3d --scenes``); 0: none
    scene: SceneConfig = field(default_factory=SceneConfig)  #: the rooms of both

    def check(self) -> None:
        if self.renders < 0 or (self.renders == 0 and not self.icons):
            raise UsageError("renders must be >= 0, and > 0 when icons are off")
        if self.min_models < 4:
            raise UsageError("min_models must be >= 4 (2 source + 1 query + 1 target)")
        if not (0 < self.source < 1 and 0 < self.queries < 1 and self.source + self.queries < 1):
            raise UsageError("source and queries must be fractions in (0, 1) with source + queries < 1")
        if not 0 <= self.val < 1:
            raise UsageError("val must be a fraction in [0, 1)")
        if self.max_per_class is not None and self.max_per_class < 4:
            raise UsageError("max_per_class must be >= 4")
        if self.source_renders is not None and self.source_renders < 1:
            raise UsageError("source_renders must be >= 1")
        if self.source_scenes < 0 or self.val_scenes < 0:
            raise UsageError("source_scenes and val_scenes must be >= 0 (scene photos per model)")
        if self.val_scenes and self.val == 0:
            raise UsageError("val_scenes needs val models: set val > 0")

    def photo_for(self, group: str) -> tuple[PhotoConfig, int]:
        """(photo settings, renders per model) of a photo group, at this build's image size."""
        photo, renders = self.photo, self.renders
        if group == "source":
            photo, renders = self.source_photo or photo, self.source_renders or renders
        return replace(photo, image_size=self.image_size), renders


#: ``small``: all 18 classes, 8 light models each, 2 renders -- minutes on 2 cores, for the demo.
#: ``full``: every curated model of every class with >= 8 models, 4 renders each.
BENCH_PRESETS: dict[str, BenchConfig] = {
    "small": BenchConfig(renders=2, max_per_class=8),
    "full": BenchConfig(),
}


def preset_config(preset: str, seed: int = 0, variety: str | None = None) -> BenchConfig:
    """``BENCH_PRESETS[preset]`` at ``seed``, its source photos widened by ``variety`` (default: the
    preset's :data:`~ftspl.data.variety.DEFAULT_VARIETY`): what ``ftspl data sh3d``, the demo and the
    benchmark scripts build."""
    if preset not in BENCH_PRESETS:
        raise UnknownKeyError("bench preset", preset, BENCH_PRESETS)
    return apply_variety(replace(BENCH_PRESETS[preset], seed=seed), variety or DEFAULT_VARIETY[preset])


@dataclass
class Split:
    root: Path
    source: Path  #: source/<class>/<model>__r<k>.jpg + <model>__icon.png (labelled photos)
    val: Path  #: val/<class>/... (labelled photos of held-out source models, for tuning)
    queries: Path  #: queries/<class>/... (held out, evaluation only)
    target: Path  #: target/<class>/<model>/<file>.obj (+ mtl, textures): the unlabelled gallery
    classes: list[str]
    groups: dict[str, dict[str, list[str]]]  #: group -> class -> model keys
    counts: dict[str, int]  #: group -> number of models
    photos: dict[str, int]  #: group -> number of images
    manifest: Path
    notice: Path
    val_gallery: Path | None = None  #: val_gallery/<class>/<model>/...: the source models' meshes (tuning gallery)
    val_scenes: Path | None = None  #: val_scenes/<class>/<model>__scene<k>.jpg, when the build has them
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  #: model key -> why its renders are missing


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def split_models(models: list[Sh3dModel], cfg: BenchConfig) -> dict[str, dict[str, list[Sh3dModel]]]:
    """Disjoint per-class groups ``{group: {class: [model]}}`` (pure: no files touched)."""
    cfg.check()
    by_class: dict[str, list[Sh3dModel]] = defaultdict(list)
    for m in models:
        if m.faces <= cfg.max_faces:
            by_class[m.label].append(m)
    classes = sorted(c for c, ms in by_class.items() if len(ms) >= cfg.min_models)
    if cfg.max_classes is not None:
        classes = sorted(sorted(classes, key=lambda c: (-len(by_class[c]), c))[: cfg.max_classes])
    out: dict[str, dict[str, list[Sh3dModel]]] = {g: {} for g in GROUPS}
    for c in classes:
        ms = sorted(by_class[c], key=lambda m: m.key)
        rng = np.random.default_rng([cfg.seed, _stable(c)])
        ms = [ms[i] for i in rng.permutation(len(ms))]
        if cfg.max_per_class is not None:
            ms = ms[: cfg.max_per_class]
        n = len(ms)
        ns = max(2, int(cfg.source * n))
        nq = max(1, int(cfg.queries * n))
        nv = 0 if cfg.val == 0 or ns < 3 else max(1, round(cfg.val * ns))
        out["val"][c] = ms[:nv]
        out["source"][c] = ms[nv:ns]
        out["queries"][c] = ms[ns : ns + nq]
        out["target"][c] = ms[ns + nq :]
    return out


def build_sh3d_benchmark(
    out: Path,
    cache: Path,
    cfg: BenchConfig = BenchConfig(),
    progress: Callable[[str, int, int], None] | None = None,
    link_from: Path | None = None,
) -> Split:
    """Fetch the Debian packages (once, into ``cache``) and lay the benchmark out under ``out``.

    Re-running with the same config reuses the files already there (a killed
    build resumes); a different config rebuilds the group folders. ``link_from``: an
    earlier build of the same seed and preset whose identical files are hard-linked
    instead of rendered again (a variety study renders only the source photos).
    """
    t0 = time.perf_counter()
    cfg.check()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda phase, done, total: None)
    libdir = fetch_sources(cache)
    backgrounds, bg_versions = fetch_backgrounds(cache)
    groups = split_models(all_models(), cfg)
    if not any(groups["target"].values()):
        raise UsageError(f"no class has {cfg.min_models} models with at most {cfg.max_faces} faces")
    _reuse_or_reset(out, cfg)
    if link_from is not None:
        _link_from(Path(link_from), out, cfg)
    photo_cfg = replace(cfg.photo, image_size=cfg.image_size)

    photo_models = [(g, c, m) for g in PHOTO_GROUPS for c, ms in groups[g].items() for m in ms]
    failed: dict[str, str] = {}
    n_photos = {g: 0 for g in GROUPS}
    with PhotoRenderer(photo_cfg) as renderer:
        cutouts = _clutter_cutouts(renderer, libdir, groups, cfg, report)
        for i, (g, c, m) in enumerate(photo_models):
            report("photos", i, len(photo_models))
            folder = out / g / c
            if cfg.icons:
                icon = folder / f"{m.key}__icon.png"
                if not icon.exists():
                    extract_icon(libdir, m, icon)
                n_photos[g] += 1
            names = [folder / f"{m.key}__r{k}.jpg" for k in range(cfg.photo_for(g)[1])]
            if names and not all(p.exists() for p in names):
                try:
                    for p, data in zip(names, _render_model(renderer, libdir, m, cfg, backgrounds, g, cutouts)):
                        atomic_write_bytes(p, data)
                except TextureLoadError as exc:
                    failed[m.key] = exc.reason
                    log.warning("%s", exc)
                    continue
            n_photos[g] += len(names)
        report("photos", len(photo_models), len(photo_models))
    scenes, scene_failed = build_scene_photos(out, libdir, backgrounds, groups, cfg.seed, cfg.source_scenes,
                                              cfg.val_scenes, photo_cfg, cfg.scene, report)
    n_photos["source"] += scenes.get("source", 0)
    failed.update({f"{key} (scene photos)": why for key, why in scene_failed.items()})
    if cfg.val_scenes:
        n_photos[SCENE_FOLDER] = scenes.get(SCENE_FOLDER, 0)

    meshes = [("target", c, m) for c, ms in groups["target"].items() for m in ms]
    meshes += [("val_gallery", c, m) for c, ms in groups["source"].items() for m in ms]
    for i, (folder, c, m) in enumerate(meshes):
        report("gallery", i, len(meshes))
        dest = out / folder / c / m.key
        if not any(dest.glob("*.obj")):
            tmp = dest.with_name(f".{m.key}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            extract_model(libdir, m, tmp)
            os.replace(tmp, dest)
    report("gallery", len(meshes), len(meshes))

    used = [m for g in GROUPS for ms in groups[g].values() for m in ms]
    versions = {
        FURNITURE_PACKAGE: package_version(cache, FURNITURE_PACKAGE),
        CATALOG_PACKAGE: package_version(cache, CATALOG_PACKAGE),
        **bg_versions,
    }
    photo_counts = {g: n_photos[g] for g in (*PHOTO_GROUPS, SCENE_FOLDER) if g in n_photos}
    classes = sorted(groups["target"])
    keys = {g: {c: [m.key for m in ms] for c, ms in groups[g].items()} for g in GROUPS}
    counts = {g: sum(len(v) for v in keys[g].values()) for g in GROUPS}
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": cfg.seed,
        "config": _config_record(cfg),
        "packages": versions,
        "classes": classes,
        "counts": counts,
        "photos": photo_counts,
        "groups": keys,
        **manifest_record(cfg.seed, scenes=bool(cfg.val_scenes)),
        "models": {
            m.key: {"class": m.label, "name": m.name, "source": m.source, "catalog_id": m.catalog_id,
                    "model_path": m.model_path, "license": m.license, "creator": m.creator}
            for m in sorted(used, key=lambda m: m.key)
        },
        "failed": failed,
        "backgrounds": [b.name for b in backgrounds],
        **({"scenes": {"sidecar": SIDECAR, "photos": scenes}} if scenes else {}),
    }
    notice = out / "NOTICE.txt"
    atomic_write_bytes(notice, bench_notice(used, backgrounds, versions).encode())
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return Split(
        root=out, source=out / "source", val=out / "val", queries=out / "queries", target=out / "target",
        classes=classes, groups=keys, counts=counts, photos=photo_counts, manifest=out / "manifest.json",
        notice=notice, val_gallery=out / "val_gallery", seconds=time.perf_counter() - t0, failed=failed,
        val_scenes=out / SCENE_FOLDER if cfg.val_scenes else None,
    )


def _load(libdir: Path, m: Sh3dModel):
    with tempfile.TemporaryDirectory(prefix="ftspl-sh3d-") as tmp:
        return load_textured_mesh(extract_model(libdir, m, Path(tmp)))


def _render_model(renderer: PhotoRenderer, libdir: Path, m: Sh3dModel, cfg: BenchConfig, backgrounds,
                  group: str = "queries", cutouts: list | None = None) -> list[bytes]:
    """A photo model's renders with its group's settings, from a generator seeded by (seed, model)."""
    photo, renders = cfg.photo_for(group)
    rng = np.random.default_rng([cfg.seed, _stable(m.key)])
    return renderer.render(_load(libdir, m), rng, backgrounds, n=renders, cfg=photo, cutouts=cutouts)


CLUTTER_MODELS = 24  #: catalogue objects outside the benchmark that clutter photos, 2 views each
CLUTTER_MAX_FACES = 40_000


def _clutter_cutouts(renderer: PhotoRenderer, libdir: Path, groups: dict, cfg: BenchConfig, report) -> list:
    """Cutouts of catalogue models the split does not use (other classes, over the caps): the
    other objects of a cluttered photo. Seeded by ``cfg.seed`` alone; empty when no photo
    group asks for catalogue clutter."""
    photos = [cfg.photo_for(g)[0] for g in PHOTO_GROUPS]
    if not any(p.clutter[1] > 0 and p.clutter_object > 0 for p in photos):
        return []
    used = {m.key for gs in groups.values() for ms in gs.values() for m in ms}
    spare = sorted((m for m in all_models() if m.key not in used and m.faces <= CLUTTER_MAX_FACES), key=lambda m: m.key)
    rng = np.random.default_rng([cfg.seed, _stable("clutter")])
    pick = [spare[i] for i in rng.permutation(len(spare))[:CLUTTER_MODELS]]
    photo = cfg.photo_for("source")[0]
    out: list = []
    for i, m in enumerate(pick):
        report("clutter", i, len(pick))
        try:
            out += renderer.cutouts(_load(libdir, m), np.random.default_rng([cfg.seed, _stable(m.key), 1]), 2,
                                    cfg=replace(photo, material_prob=0.0))
        except TextureLoadError as exc:
            log.warning("clutter model skipped: %s", exc)
    return out


def bench_notice(models: list[Sh3dModel], backgrounds: list, versions: dict[str, str]) -> str:
    """The CC-BY credits of every model used, then the background images' sources."""
    lines = [notice_text(models).rstrip("\n"), "", "Photo backgrounds (random crops), from Debian packages:"]
    by_credit: dict[str, list[str]] = defaultdict(list)
    for b in backgrounds:
        pkg, name = b.name.split(":", 1)
        by_credit[f"{pkg} {versions.get(pkg, '')} - {b.credit}"].append(name)
    for credit, names in sorted(by_credit.items()):
        lines.append(f"  {credit}: {', '.join(names)}")
    lines += ["", "Debian package versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))]
    return "\n".join(lines) + "\n"


__all__ = [
    "BENCH_PRESETS",
    "BenchConfig",
    "DataFetchError",
    "Split",
    "bench_notice",
    "build_sh3d_benchmark",
    "preset_config",
    "split_models",
]
