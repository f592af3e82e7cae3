"""Photo queries as the API runs them: decode and crop each photo, embed them in one batch, search.

:meth:`ftspl.api.Library.query` validates its arguments and calls these in
order (:func:`decode_photos`, :func:`open_set_cut`, :func:`search_photos`);
:mod:`ftspl.shape_query` reuses them for the photos of a mixed query. Plain
functions over the engine's encoders and index reader, so ``api.py`` stays
the page of verbs; nothing here imports PyTorch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ftspl.engine.errors import ImageLoadError, UsageError
from ftspl.results import Failure, Hit, PhotoResult


def decode_photos(items: list, names: Sequence[str] | None, box, skip_bad: bool, max_pixels: int,
                  max_file_bytes: int):
    """Each photo decoded and cropped on its own: with ``skip_bad`` one bad photo does not sink the others."""
    from ftspl.photo_input import crop, to_image

    images, kept, regions, decode_ms, failed = [], [], [], [], []
    for i, item in enumerate(items):
        t = time.perf_counter()
        try:
            img, name = to_image(item, i, max_pixels, max_file_bytes, "--max-pixels", "--max-file-bytes")
        except ImageLoadError as exc:
            if not skip_bad:
                raise
            failed.append(Failure(exc.path, exc.reason))
            continue
        img, region = crop(img, box)
        images.append(img)
        kept.append(names[i] if names is not None else name)
        regions.append(region)
        decode_ms.append((time.perf_counter() - t) * 1000)
    return images, kept, regions, decode_ms, failed


def search_photos(enc, reader, images: list, names: list[str], boxes: list, decode_ms: list[float], top: int,
                  match, fuse: bool, fusion: str | None, cut: float | None, rcfg):
    """Embed the photos as one batch; per-photo lists (unless ``fuse``) and the fused list (with ``fusion``).

    With regions (``rcfg.mode`` other than none) each photo's windows are
    embedded with it and its list is :func:`~ftspl.engine.scoring.regions.region_search`'s.
    """
    import numpy as np

    from ftspl.engine.model.preprocess import to_tensor
    from ftspl.engine.scoring.fusion import fuse_embeddings, fused_search
    from ftspl.engine.scoring.views import MatchConfig, match_views, search_matched

    if not images:
        return [], None, reader.generation
    sets = None
    if rcfg.mode == "none":
        emb = enc.embed_photos(np.stack([to_tensor(im, enc.preprocess) for im in images]))
    else:
        from ftspl.engine.scoring.regions import embed_regions

        sets = embed_regions(enc, images, rcfg)
        emb = np.stack([rows[0] for rows, _ in sets])  # row 0: the whole photo
    results: list[PhotoResult] = []
    gen = None
    if not fuse and sets is not None:
        results, gen = search_regions(reader, sets, names, boxes, decode_ms, top, cut, rcfg.fusion)
    elif not fuse:
        hits, gen = search_matched(reader, emb, top, match)
        results = [PhotoResult(n, [Hit.from_engine(h, cut, reg) for h in hs], ms, gen)
                   for n, hs, reg, ms in zip(names, hits, boxes, decode_ms)]
    fused = None
    if fusion is not None:
        hits, fgen = fused_search(reader, emb, top, fusion)
        hits = match_views(reader, fuse_embeddings(emb), [hits], top, MatchConfig(rerank="none"))[0]
        gen = fgen if gen is None else gen
        fused = PhotoResult(" + ".join(names), [Hit.from_engine(h, cut) for h in hits], sum(decode_ms), fgen)
        if fuse:
            results = [fused]
    return results, fused, gen


def search_regions(reader, sets: list, names: list[str], boxes: list, decode_ms: list[float], top: int,
                   cut: float | None, how: str) -> tuple[list[PhotoResult], int | None]:
    """Each photo's regional list; a hit's ``region`` in the photo's pixels (None: the whole photo)."""
    from ftspl.engine.scoring.regions import region_search, with_views
    from ftspl.results import Region

    results, gen = [], None
    for (rows, windows), name, box, ms in zip(sets, names, boxes, decode_ms):
        hits, picked, gen = region_search(reader, rows, top, how)
        hits = with_views(reader, rows, hits, picked)
        dx, dy = (box.x0, box.y0) if box is not None else (0, 0)
        where = [box if w is None else Region(w[0] + dx, w[1] + dy, w[2] + dx, w[3] + dy) for w in windows]
        results.append(PhotoResult(name, [Hit.from_engine(h, cut, where[r]) for h, r in zip(hits, picked)],
                                   ms, gen))
    return results, gen


def open_set_cut(engine, max_distance: float | None, min_score: float | None) -> tuple[float | None, str | None]:
    """The distance beyond which a hit is no match, and where it comes from (argument, calibration, none)."""
    from ftspl.engine.scoring.openset import distance_of, load_calibration

    if max_distance is not None and min_score is not None:
        raise UsageError("give --max-distance or --min-score, not both (they are one cut in two units)")
    if max_distance is not None:
        return float(max_distance), "--max-distance"
    if min_score is not None:
        return distance_of(min_score), "--min-score"
    cal = load_calibration(engine.dir, engine.manifest.model_hash)
    if cal is None:
        return None, None
    return cal.max_distance, f"calibrated on {cal.photos} at {cal.precision:.0%} precision"


__all__ = ["decode_photos", "open_set_cut", "search_photos", "search_regions"]
