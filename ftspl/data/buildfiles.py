"""What a benchmark build's folder holds, and when an earlier build's files are kept or linked.

A build (:func:`ftspl.data.bench.build_sh3d_benchmark`) records its whole
config in ``manifest.json``; a second build into the same folder keeps the
files when the config is the same and starts again otherwise, and a build can
hard-link the files an earlier build of the same seed made byte for byte (a
photo-variety study renders only its source photos). Settings added after
builds existed (the variety knobs, the scene photos) are left out of the
record while at their defaults, so those builds are not rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ftspl.data.photo_domain import PhotoConfig
from ftspl.data.scene_build import SCENE_FOLDER, SIDECAR
from ftspl.data.variety import VARIETY_FIELDS
from ftspl.engine.errors import UsageError

__all__ = ["FOLDERS", "GROUPS", "MANIFEST_VERSION", "PHOTO_GROUPS", "SCENE_KEYS", "config_record", "link_from",
           "reuse_or_reset"]

GROUPS = ("source", "val", "queries", "target")  #: disjoint model groups
FOLDERS = (*GROUPS, "val_gallery", SCENE_FOLDER)  #: folders of a build (val_gallery: the source models' meshes)
PHOTO_GROUPS = ("source", "val", "queries")
SCENE_KEYS = ("source_scenes", "val_scenes", "scene")  #: left out of the manifest while no scene is asked for
MANIFEST_VERSION = 1
BenchConfig = Any  #: ftspl.data.bench.BenchConfig (that module imports this one)


def config_record(cfg: BenchConfig) -> dict:
    """The config as the manifest keeps it. Variety settings at their defaults are left out, so a
    default build's manifest (and its reuse check) is what it was before they existed."""
    rec = json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as read back from JSON
    photo_defaults = json.loads(json.dumps(asdict(PhotoConfig())))
    for key in ("source_photo", "source_renders"):
        if rec[key] is None:
            del rec[key]
    if not (cfg.source_scenes or cfg.val_scenes):
        for key in SCENE_KEYS:
            del rec[key]
    for photo in (rec["photo"], rec.get("source_photo")):
        for key in VARIETY_FIELDS:
            if photo is not None and photo[key] == photo_defaults[key]:
                del photo[key]
    return rec


def link_from(base: Path, out: Path, cfg: BenchConfig) -> list[str]:
    """Hard-link (copy across file systems) an earlier build's files that this build would make
    byte for byte: val/, queries/ and target/ when the split and base photo settings match, and
    source/ too when the source settings match; scene photos never (each build renders its own,
    with its own record). Returns the groups linked."""
    try:
        old = json.loads((base / "manifest.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{base}: not a finished benchmark build to link from ({exc})") from None
    new = config_record(cfg)
    source_keys = ("source_photo", "source_renders")
    free = (*source_keys, *SCENE_KEYS)  # scene photos are never linked: each build renders its own
    if {k: v for k, v in old.items() if k not in free} != {k: v for k, v in new.items() if k not in free}:
        raise UsageError(f"{base}: built with another split or val/query photo settings; link from a build of "
                         "the same seed and preset")
    groups = ["val", "queries", "target", "val_gallery"]
    if all(old.get(k) == new.get(k) for k in source_keys):
        groups.append("source")
    for g in groups:
        for src in sorted((base / g).rglob("*")):
            dest = out / src.relative_to(base)
            if src.is_dir() or dest.exists() or "__scene" in src.name:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy2(src, dest)
    return groups


def reuse_or_reset(out: Path, cfg: BenchConfig) -> None:
    """Keep files of an earlier build with the same config; otherwise remove the group folders."""
    manifest = out / "manifest.json"
    try:
        old = json.loads(manifest.read_text())
        same = old.get("config") == config_record(cfg) and old.get("version") == MANIFEST_VERSION
    except (OSError, ValueError):
        same = False
    if same:
        return
    for g in FOLDERS:
        if (out / g).is_dir():
            shutil.rmtree(out / g)
    manifest.unlink(missing_ok=True)
    (out / SIDECAR).unlink(missing_ok=True)
