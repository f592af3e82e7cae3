"""Queries that hold shapes: "which of my shapes look like this one?", for :meth:`ftspl.api.Library.query`.

A mesh file or a view folder among a query's inputs is rendered and encoded
as ``index add`` would (:mod:`ftspl.engine.index.shapequery`: the render
worker's child process, the mesh caps and the per-file time limit) and
searched with that shape embedding. The shape itself is left out of its hits:
every stored shape with its path or its content hash (the same bytes under
another name) is skipped, and the list is still ``top`` long.

Photos and shapes are one object's evidence only when the caller says so:
mixing them needs ``fuse=True`` (one list, by ``fusion``). The open-set
threshold calibrated for photos (``ftspl eval --calibrate``) is not applied
to shape queries; ``max_distance`` (or ``min_score``) is, when given.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftspl.engine.errors import MeshLoadError, UsageError
from ftspl.engine.index.shapequery import QueryShape, ShapeEmbedder, shape_kind
from ftspl.engine.index.store.schema import normalize_path
from ftspl.photo_search import decode_photos, open_set_cut
from ftspl.results import Failure, Hit, PhotoResult, QueryAnswer

MIXED = ("{photo} is a photo and {shape} a shape: a query mixes them only with --fuse (one list for one "
         "object); query photos and shapes separately otherwise")


def shape_kinds(items: Sequence[Any]) -> list[str | None]:
    """Per input: ``'mesh'``, ``'views'`` or None (a photo)."""
    return [shape_kind(it) for it in items]


def embedder(lib, spec, limits, timeout_s: float) -> ShapeEmbedder:
    """The library's shape embedder for these settings (kept between queries; closed with the library)."""
    with lib._lock:
        current = lib._embedder
        if current is not None and current.serves(spec, limits, timeout_s):
            return current
        lib._embedder = ShapeEmbedder(lib.engine.encoders, spec, limits, timeout_s)
    if current is not None:
        current.close()
    return lib._embedder


def _self_test(shape: QueryShape) -> Callable[[Any], bool]:
    """Whether a hit is the query shape itself: its path, or the same content under another name."""
    path = normalize_path(shape.path)
    return lambda h: h.path == path or h.content_hash == shape.digest


def search_without(search: Callable[[int], tuple[list, int]], top: int, is_self: Callable[[Any], bool]):
    """``top`` hits of ``search(k)`` with the query's own shapes left out (``k`` widened until enough remain)."""
    from dataclasses import replace

    k = top + 1
    while True:
        hits, gen = search(k)
        kept = [h for h in hits if not is_self(h)]
        if len(kept) >= top or len(hits) < k:
            return [replace(h, rank=r) for r, h in enumerate(kept[:top], start=1)], gen
        k *= 2


def answer(lib, items: list, kinds: list[str | None], top: int, *, names: Sequence[str] | None, box, fuse: bool,
           fusion: str | None, rerank: str, max_distance: float | None, min_score: float | None,
           hnsw_ef: int | None, skip_bad: bool, max_pixels: int, max_file_bytes: int, limits, file_timeout: float,
           exclude_self: bool) -> QueryAnswer:
    """:meth:`ftspl.api.Library.query` for inputs of which at least one is a shape (``kinds``: :func:`shape_kinds`)."""
    from ftspl.engine.index.pipeline.plan import render_spec
    from ftspl.engine.scoring.fusion import fused_search

    photos = [i for i, k in enumerate(kinds) if k is None]
    shapes = [i for i, k in enumerate(kinds) if k is not None]
    label = (lambda i: str(names[i])) if names is not None else (lambda i: str(items[i]) if isinstance(
        items[i], (str, Path)) else f"image-{i + 1}")
    if photos and not fuse:
        raise UsageError(MIXED.format(photo=label(photos[0]), shape=label(shapes[0])))
    if rerank != "none":
        raise UsageError(f"--rerank {rerank} re-ranks a photo's hits by their views; a shape query keeps "
                         "its order (use --rerank none)")
    t0 = time.perf_counter()
    engine = lib.engine
    images, kept, _, decode_ms, failed = decode_photos([items[i] for i in photos], [label(i) for i in photos],
                                                       box, skip_bad, max_pixels, max_file_bytes)
    reader = lib.reader()
    if hnsw_ef is not None:
        reader.ann.ef_search = hnsw_ef
    if lib.follow:
        reader.refresh()
    t_open = time.perf_counter()
    spec = render_spec(engine.manifest, reader.info, None)
    embedded = embedder(lib, spec, limits, file_timeout).embed([(Path(items[i]), kinds[i]) for i in shapes])
    good: list[tuple[str, QueryShape]] = []
    for i, shape in zip(shapes, embedded):
        if shape.error is None:
            good.append((label(i), shape))
        elif skip_bad:
            failed.append(Failure(label(i), shape.error))
        else:
            raise MeshLoadError(label(i), shape.error)
    t_rendered = time.perf_counter()
    cut, cut_from = open_set_cut(lib.engine, max_distance, min_score) if (max_distance, min_score) != (None, None) \
        else (None, None)
    selves = [_self_test(s) for _, s in good] if exclude_self else []
    is_self = (lambda h: any(t(h) for t in selves)) if selves else (lambda h: False)
    rows = [s.embedding for _, s in good]
    if images:
        from ftspl.engine.model.preprocess import to_tensor

        enc = engine.encoders
        rows = list(enc.embed_photos(np.stack([to_tensor(im, enc.preprocess) for im in images]))) + rows
    tags = list(kept) + [n for n, _ in good]
    results: list[PhotoResult] = []
    fused, gen = None, reader.generation
    if rows and not fuse:
        for (name, shape), row in zip(good, rows):
            own = _self_test(shape) if exclude_self else (lambda h: False)
            hits, gen = search_without(lambda k: _first(reader.search_at(row[None, :], k)), top, own)
            results.append(PhotoResult(name, [Hit.from_engine(h, cut) for h in hits], 0.0, gen))
    if rows and (fuse or fusion is not None) and len(rows) > (0 if fuse else 1):
        how = fusion or "mean"
        emb = np.stack(rows).astype(np.float32)
        hits, gen = search_without(lambda k: fused_search(reader, emb, k, how), top, is_self)
        fused = PhotoResult(" + ".join(tags), [Hit.from_engine(h, cut) for h in hits], sum(decode_ms), gen)
        if fuse:
            results = [fused]
    t_done = time.perf_counter()
    pictures = list(images) + [_picture(s.preview) for _, s in good]
    return QueryAnswer(
        model_id=engine.manifest.model_id, results=results, rerank="none",
        fusion=(fusion or "mean") if fused is not None else None, fused=fused, generation=gen, max_distance=cut,
        max_distance_from=cut_from, views_note=None, failed=failed, open_s=t_open - t0,
        decode_s=t_rendered - t_open, search_s=t_done - t_rendered,
        images=tuple(pictures[:1] if fuse else pictures[len(images):]),
    )


def _picture(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


def _first(result: tuple[list[list], int]) -> tuple[list, int]:
    hits, gen = result
    return hits[0], gen


__all__ = ["MIXED", "answer", "embedder", "search_without", "shape_kinds"]
