"""Builds and scoring of the photo-variety study (``photo_variety.py``): a helper module, not a script.

A *variety* build is the SH3D benchmark of one seed whose labelled source
photos are rendered with one preset of :data:`ftspl.data.variety.PHOTO_VARIETY`;
its val/, val_gallery/, queries/ and target/ are hard-linked from the seed's
``base`` build (``build_sh3d_benchmark(link_from=...)``), so every variety is
scored on the same images, which :func:`digest` checks byte for byte.

``val_hard`` is a second set of tuning photos: the base build's val models
rendered with every knob of the ``all`` preset (clutter as real-image patches
only), from a generator stream the training photos do not use. It ranks the
val gallery like val/ does (purpose ``tune``), with the network a val cell
trained (:func:`score_trained_cell`: no second training).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from common import logger, study_home
from studylib import Split

log = logger("variety")


def digest(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file under ``folder``."""
    h = hashlib.sha256()
    for p in sorted(q for q in Path(folder).rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def as_split(seed: int, s) -> Split:
    """studylib's :class:`Split` of a :func:`ftspl.data.bench.build_sh3d_benchmark` result."""
    return Split(seed, s.root, s.source, s.val, s.val_gallery, s.queries, s.target, s.classes, s.counts, s.photos)


def build_variety(variety: str, seed: int, data_root: Path, link: Path | None):
    """``<data_root>/<variety>-s<seed>`` (reused when built with this config); the bench builder's split.

    ``link``: an earlier build of the same seed whose identical files are hard-linked (the seed's
    base build for a variety; for ``base``, the study's own build of that seed when its config matches).
    """
    from ftspl.data.bench import build_sh3d_benchmark, preset_config
    from ftspl.engine.errors import UsageError

    cfg = preset_config("full", seed, variety)
    out = Path(data_root) / f"{variety}-s{seed}"
    try:
        return build_sh3d_benchmark(out, study_home().debian_cache, cfg, link_from=link)
    except UsageError as exc:  # the study's build has another config: render everything here
        if variety != "base" or link is None:
            raise
        log(f"not linking: {exc}")
        return build_sh3d_benchmark(out, study_home().debian_cache, cfg)


def base_link(seed: int, study_data: Path) -> Path | None:
    """The study's build of ``seed`` (``studylib.build_split``'s ``data-full-s<seed>``) when it is finished."""
    p = Path(study_data) / f"data-full-s{seed}"
    return p if (p / "manifest.json").exists() else None


def build_hard_val(seed: int, data_root: Path, base) -> Path:
    """``<data_root>/val-hard-s<seed>/val``: the base build's val models, rendered with the ``all``
    variety's photo knobs (patch clutter only), 4 renders each; reused when complete."""
    import numpy as np

    from ftspl.data.backgrounds import fetch_backgrounds
    from ftspl.data.bench import BENCH_PRESETS, _load, _stable
    from ftspl.data.photo_domain import PhotoRenderer
    from ftspl.data.sh3d import all_models, fetch_sources
    from ftspl.data.variety import PHOTO_VARIETY
    from ftspl.engine.files import atomic_write_bytes

    out = Path(data_root) / f"val-hard-s{seed}" / "val"
    cfg = replace(BENCH_PRESETS["full"], seed=seed)
    photo = replace(cfg.photo, image_size=cfg.image_size, **PHOTO_VARIETY["all"]["photo"], clutter_object=0.0)
    models = {m.key: m for m in all_models()}
    todo = [(c, models[p.name.split("__")[0]]) for c in sorted(os.listdir(base.val))
            for p in sorted((Path(base.val) / c).glob("*__r0.jpg"))]
    cache = study_home().debian_cache
    missing = [(c, m) for c, m in todo if not all((out / c / f"{m.key}__r{k}.jpg").exists() for k in range(4))]
    if missing:
        pool, _ = fetch_backgrounds(cache)
        libdir = fetch_sources(cache)
        with PhotoRenderer(photo) as r:
            for c, m in missing:
                rng = np.random.default_rng([seed, _stable(m.key), 2])
                for k, data in enumerate(r.render(_load(libdir, m), rng, pool, n=4)):
                    atomic_write_bytes(out / c / f"{m.key}__r{k}.jpg", data)
    return out


def score_trained_cell(row: str, split: Split, purpose: str, fields: dict | None, work: Path, photos: Path,
                       tag: str) -> dict:
    """Score ``photos`` against the gallery of ``purpose`` with the network ``studylib.run_cell`` trained
    for (row, split, purpose, fields): run that cell first. Cached as ``<row>-<key>-<tag>.json``.

    The photos must be of the split's role for ``purpose`` (``val_hard``: the val models, ``tune``).
    A record like ``run_cell``'s (metrics, per_query, query_groups), so ``studylib.paired`` pairs it.
    """
    from studylib import PRETRAINED_ROWS, _centred, cell_key, query_groups, score, train_config

    cfg = train_config(row, split, fields)
    key = cell_key(row, cfg, purpose)
    folder = Path(work) / f"seed{split.seed}" / purpose
    done = folder / f"{row}-{key}-{tag}.json"
    if done.exists():
        return json.loads(done.read_text())
    _, gallery = split.scored(purpose)  # refuses a split whose manifest does not give it this role
    home = study_home()
    if row in PRETRAINED_ROWS:
        from ftspl.train.loop import pretrained_embeddings

        emb = pretrained_embeddings(replace(cfg, target=str(gallery), queries=str(photos)), home=home)
        q, t = emb.query, emb.target
        if row == "CNN_centred":
            q, t = _centred(pretrained_embeddings(cfg, home=home).target, cfg.keep_pretrained_dims, q, t)
    else:
        from ftspl.train.apply import embed_run

        emb = embed_run(folder / f"run-{row}-{key}", photos, gallery, home=home)
        q, t = emb.query, emb.target
    metrics, per, pr = score(q, emb.query_labels, t, emb.target_labels)
    out = {"row": row, "seed": split.seed, "purpose": purpose, "photos": tag, "fields": fields or {}, "key": key,
           "metrics": metrics, "per_query": per, "query_groups": query_groups(emb.query_paths),
           "n_query": len(q), "n_gallery": len(t), "pr": pr}
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out))
    return out


__all__ = ["as_split", "base_link", "build_hard_val", "build_variety", "digest", "score_trained_cell"]
