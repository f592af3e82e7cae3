"""The scene photos of a benchmark build, under the benchmark's split rules, and their record.

Two kinds, both from :mod:`ftspl.data.scenes` (a furnished room around one
labelled *main* model):

* training scenes (``BenchConfig.source_scenes`` per source model, the
  ``scenes`` variety): ``source/<class>/<model>__scene<k>.jpg``; every model in
  the room is a **source** model;
* scene validation (``BenchConfig.val_scenes`` per val model,
  ``ftspl data sh3d --scenes``): ``val_scenes/<class>/<model>__scene<k>.jpg``,
  purpose ``tune`` (:mod:`ftspl.data.protocol`); the main model is a **val**
  model, the others are source models.

So a query or target model never appears in a scene, and a val model never in
a training scene. Which models each photo shows is recorded in the build's
sidecar ``scenes.json`` (``{"photos": {relative path: {"models": [main,
...], "classes": [...], "roles": [...]}}}``), and :func:`rule_breaks` checks it
against the manifest's groups. Each photo draws from a generator seeded by
``(seed, main model, k)``, so a build is reproducible and resumable: a photo
whose file and record exist is kept.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ftspl.data.catalogue import catalogue_sizes, room_textures
from ftspl.data.photo_domain import PhotoConfig
from ftspl.data.room import Candidate, SceneConfig, plan_room
from ftspl.data.scenes import SceneRenderer
from ftspl.data.sh3d import Sh3dModel, extract_model
from ftspl.data.textured import TextureLoadError, TexturedMesh, load_textured_mesh
from ftspl.engine.errors import UsageError
from ftspl.engine.files import atomic_write_bytes

__all__ = ["SCENE_FOLDER", "SIDECAR", "build_scene_photos", "rule_breaks", "scene_name"]

log = logging.getLogger(__name__)

SIDECAR = "scenes.json"
SCENE_FOLDER = "val_scenes"
_VERSION = 1
_STREAM = 7  #: the scene photos' generator stream (the renders use none, the clutter 1, val_hard 2)
_MESH_CACHE = 48  #: loaded models kept between photos


def scene_name(key: str, k: int) -> str:
    return f"{key}__scene{k}.jpg"


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class _Meshes:
    """Models loaded with their materials, the most recently used kept (a room reuses the source models)."""

    def __init__(self, libdir: Path, max_texture: int) -> None:
        self.libdir, self.max_texture = libdir, max_texture
        self._cache: OrderedDict[str, TexturedMesh] = OrderedDict()

    def get(self, m: Sh3dModel) -> TexturedMesh:
        if m.key in self._cache:
            self._cache.move_to_end(m.key)
            return self._cache[m.key]
        with tempfile.TemporaryDirectory(prefix="ftspl-scene-") as tmp:
            mesh = load_textured_mesh(extract_model(self.libdir, m, Path(tmp)), max_texture=self.max_texture)
        self._cache[m.key] = mesh
        if len(self._cache) > _MESH_CACHE:
            self._cache.popitem(last=False)
        return mesh


def rule_breaks(record: dict, groups: dict[str, dict[str, list[str]]]) -> list[str]:
    """The sidecar's photos that break the split rules (an empty list when none does).

    ``record``: the sidecar's ``photos``; ``groups``: the manifest's ``{group: {class: [model key]}}``.
    A training scene shows source models only; a validation scene a val model first, then source models.
    """
    keys = {g: {k for ks in by_class.values() for k in ks} for g, by_class in groups.items()}
    out = []
    for rel, rec in sorted(record.items()):
        models = rec.get("models") or []
        folder = rel.split("/", 1)[0]
        if folder == "source":
            bad = [k for k in models if k not in keys.get("source", set())]
        elif folder == SCENE_FOLDER:
            bad = [k for k in models[:1] if k not in keys.get("val", set())]
            bad += [k for k in models[1:] if k not in keys.get("source", set())]
        else:
            bad = [f"folder {folder}"]
        if not models or bad:
            out.append(f"{rel}: {', '.join(bad) or 'no models'}")
    return out


def _read_sidecar(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("photos", {}) if isinstance(data, dict) and data.get("version") == _VERSION else {}


def _write_sidecar(path: Path, record: dict) -> None:
    body = {"version": _VERSION, "photos": dict(sorted(record.items()))}
    atomic_write_bytes(path, (json.dumps(body, indent=1) + "\n").encode())


def build_scene_photos(
    out: Path, libdir: Path, backgrounds: list, groups: dict[str, dict[str, list[Sh3dModel]]], seed: int,
    source_scenes: int, val_scenes: int, photo: PhotoConfig, cfg: SceneConfig = SceneConfig(),
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """Render the scene photos of a build under ``out``; returns ({folder: photos}, {model key: why none}).

    ``groups``: the build's split (:func:`ftspl.data.bench.split_models`); ``photo``: the camera
    faults (its image size, supersampling and MSAA too). Raises :class:`UsageError` when the
    sidecar of an earlier build lists a photo that breaks the split rules.
    """
    report = progress or (lambda phase, done, total: None)
    source = [m for ms in groups["source"].values() for m in ms]
    val = [m for ms in groups["val"].values() for m in ms]
    mains = [("source", m, source_scenes) for m in source] + [(SCENE_FOLDER, m, val_scenes) for m in val]
    mains = [(folder, m, n) for folder, m, n in mains if n > 0]
    if not mains:
        return {}, {}
    sizes = catalogue_sizes(libdir, source + val)
    by_key = {m.key: m for m in source + val}
    others = [Candidate(m.key, m.label, sizes[m.key]) for m in source if m.key in sizes
              and m.faces <= cfg.other_max_faces and sizes[m.key].height <= cfg.max_other_height
              and max(sizes[m.key].width, sizes[m.key].depth) <= cfg.max_other_side]
    supports = [c for c in others if c.size.drop_on_top and 0.35 <= c.size.height <= 1.3]
    textures = room_textures(libdir)
    sidecar = out / SIDECAR
    record = _read_sidecar(sidecar)
    failed: dict[str, str] = {}
    counts = {folder: 0 for folder, _, _ in mains}
    meshes = _Meshes(libdir, cfg.max_texture)
    jobs = [(folder, m, k) for folder, m, n in mains for k in range(n)]
    dirty = 0
    with SceneRenderer(photo) as renderer:
        for i, (folder, m, k) in enumerate(jobs):
            report("scenes", i, len(jobs))
            if m.key not in sizes:
                failed[m.key] = "no size in its Sweet Home 3D catalogue entry"
                continue
            if sizes[m.key].height > cfg.max_main_height:
                failed[m.key] = f"{sizes[m.key].height:.1f} m tall: no room holds it (max_main_height)"
                continue
            path = out / folder / m.label / scene_name(m.key, k)
            rel = path.relative_to(out).as_posix()
            if path.exists() and rel in record:
                counts[folder] += 1
                continue
            rng = np.random.default_rng([seed, _stable(m.key), _STREAM, k])
            lay = plan_room(Candidate(m.key, m.label, sizes[m.key]), others, supports, rng, cfg)
            loaded, missing = {}, set()
            for j, p in enumerate(lay.items):
                try:
                    loaded[p.key] = meshes.get(by_key[p.key])
                except TextureLoadError as exc:
                    if j == 0:
                        failed[m.key] = exc.reason
                        break
                    missing.add(j)
                    log.warning("scene model left out: %s", exc)
            if m.key in failed:
                continue
            lay.drop(missing)
            data = renderer.render_scene(lay, loaded, rng, backgrounds, textures, photo, cfg)
            atomic_write_bytes(path, data)
            record[rel] = {"models": lay.keys(), "classes": [p.label for p in lay.items],
                           "roles": [p.role for p in lay.items]}
            counts[folder] += 1
            dirty += 1
            if dirty >= 25:  # a killed build keeps what it has rendered
                _write_sidecar(sidecar, record)
                dirty = 0
        report("scenes", len(jobs), len(jobs))
    wanted = {(out / f / m.label / scene_name(m.key, k)).relative_to(out).as_posix() for f, m, k in jobs}
    record = {rel: rec for rel, rec in record.items() if rel in wanted}
    breaks = rule_breaks(record, {g: {c: [m.key for m in ms] for c, ms in by_class.items()}
                                  for g, by_class in groups.items()})
    if breaks:
        raise UsageError(f"{sidecar}: scene photos break the split rules ({'; '.join(breaks[:3])}); "
                         "delete the folder and build again")
    _write_sidecar(sidecar, record)
    return counts, failed

