"""Several photos of one object, one ranked list: the fusion rules, as a registry.

Each rule maps the photos' distances to every candidate shape (rows: photos,
columns: shapes; ``inf`` where a photo's search did not reach a shape) to one
fused distance per shape, smaller is better:

* ``mean``: the mean of the photos' cosine similarities, reported as the
  unit-vector distance ``sqrt(2 - 2 mean)``. It ranks exactly as one search with
  the normalised mean embedding (:func:`fuse_embeddings`), since the mean
  cosine is ``|p| cos(p, g)`` for the mean ``p`` of the photo vectors;
* ``max``: the best (smallest) distance any photo has to the shape (max
  similarity): one good view of the object is enough;
* ``rank``: reciprocal rank fusion, ``-sum 1 / (60 + rank)`` over the photos
  (Cormack et al. 2009): scale-free, robust to one odd photo.

``mean`` is the default: ``benchmarks/beyond.py`` measures every rule on a
tuning build and keeps the best mean val FT, ties to ``mean`` (docs/QUALITY.md,
"Query-time defaults under the protocol"; ``beyond_val.json``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ftspl.engine.errors import UnknownKeyError

RRF_K = 60.0


def _mean(dist: np.ndarray) -> np.ndarray:
    m = np.mean(1.0 - np.square(dist) / 2.0, axis=0)  # unit vectors: cosine from distance
    return np.sqrt(np.clip(2.0 - 2.0 * m, 0.0, 4.0))


def _max(dist: np.ndarray) -> np.ndarray:
    return dist.min(axis=0)


def _rank(dist: np.ndarray) -> np.ndarray:
    order = np.argsort(dist, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(dist.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, dist.shape[1] + 1)[None, :]
    score = np.where(np.isfinite(dist), 1.0 / (RRF_K + ranks), 0.0).sum(axis=0)
    return -score


#: Fusion rules by name: (photos x shapes) distances -> fused distance per shape.
FUSIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean": _mean, "max": _max, "rank": _rank}
DEFAULT_FUSION = "mean"


def fuse(dist: np.ndarray, how: str = DEFAULT_FUSION) -> np.ndarray:
    """Fused distance per shape (1-d) from the photos' distance rows (2-d)."""
    if how not in FUSIONS:
        raise UnknownKeyError("fusion", how, FUSIONS)
    dist = np.asarray(dist, np.float64)
    if dist.ndim != 2 or not dist.shape[0]:
        raise ValueError(f"expected (photos, shapes) distances, got shape {dist.shape}")
    return FUSIONS[how](dist)


def fuse_embeddings(emb: np.ndarray) -> np.ndarray:
    """The ``mean`` rule on embeddings: their normalised mean, one vector to search with."""
    m = np.asarray(emb, np.float32).mean(axis=0)
    n = float(np.linalg.norm(m))
    return (m / n if n > 0 else m)[None, :]


def fused_search(reader, emb: np.ndarray, k: int, how: str = DEFAULT_FUSION) -> tuple[list, int]:
    """One ranked hit list for several photo embeddings of one object, and its store generation.

    ``mean`` is one search with the normalised mean embedding (exact distances).
    ``max`` and ``rank`` search each photo for ``max(5k, 50)`` candidates and fuse
    over their union; a photo that did not reach a candidate counts as ``inf``.
    """
    from dataclasses import replace

    if how not in FUSIONS:
        raise UnknownKeyError("fusion", how, FUSIONS)
    if how == DEFAULT_FUSION:
        hits, gen = reader.search_at(fuse_embeddings(emb), k)
        return hits[0], gen
    per_photo, gen = reader.search_at(np.asarray(emb, np.float32), max(5 * k, 50))
    by_id = {h.id: h for hits in per_photo for h in hits}
    ids = sorted(by_id)
    if not ids:
        return [], gen
    col = {i: j for j, i in enumerate(ids)}
    dist = np.full((len(per_photo), len(ids)), np.inf)
    for row, hits in enumerate(per_photo):
        for h in hits:
            dist[row, col[h.id]] = h.distance
    fused = fuse(dist, how)
    order = np.argsort(fused, kind="stable")[:k]
    return [replace(by_id[ids[j]], rank=r + 1, distance=float(fused[j])) for r, j in enumerate(order)], gen
