"""Nearest-neighbour indexes over shape embeddings: the backend registry.

Backends share one interface (``add``, ``remove``, ``query``, ``save``, ``load``,
``len``, ``in``, ``ids``, ``config``; :mod:`ftspl.engine.index.ann.base`) so the
engine swaps them by name through :data:`ANN_BACKENDS`, a plain dict:

* ``hnsw`` (:class:`HnswIndex`) wraps ``hnswlib`` (the ``chroma-hnswlib`` wheel,
  a base dependency): the default for a new library (:data:`DEFAULT_BACKEND`);
* ``faiss-hnsw`` (:class:`FaissHnswIndex`) is faiss-cpu's HNSW (run-time AVX2 /
  AVX-512 kernels, the ``[ann]`` extra) with removal by tombstones: the same kind
  of graph at about half hnswlib's time per query, the only one measured to reach
  recall@10 >= 0.99 at >= 20x the exact twin at 1M shapes: the choice near 1M
  (``index add --ann-backend faiss-hnsw``);
* ``usearch`` (:class:`UsearchIndex`) is USearch's HNSW (float32 storage);
* ``exact`` (:class:`ExactIndex`) is the brute-force numpy twin: the ground truth
  for recall tests, and exact for small libraries.

The graph backends take the same knobs (``M``, ``ef_construction``,
``ef_search``; ``ef_search=None`` sizes the query beam from the index's size)
and import their wheel only when constructed. ``benchmarks/run.py --ann-only N``
measures them side by side (``docs/PERFORMANCE.md``, "A 1M-shape library").

All store L2-normalised embeddings and report the *Euclidean* distance
(float32). Ids are int64 labels chosen by the caller: the SQLite store's row
ids, so a query result maps straight back to shape metadata.

On disk an index is a small JSON *manifest* at the path the caller names, plus
one payload file next to it whose name carries a random token. ``save`` writes
and fsyncs the new payload under a fresh name, then atomically replaces the
manifest: that single ``os.replace`` is the commit point, so a crash or error at
any moment leaves either the old index or the new one, never a mix.

The index is a derived, rebuildable cache; SQLite is the source of truth.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from ftspl.engine.errors import IndexStateError, UnknownKeyError
from ftspl.engine.index.ann.base import AnnIndex, read_manifest
from ftspl.engine.index.ann.exact import EXACT_BLOCK_FLOATS, ExactIndex
from ftspl.engine.index.ann.faiss_hnsw import FaissHnswIndex
from ftspl.engine.index.ann.hnsw import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    HnswIndex,
)
from ftspl.engine.index.ann.usearch_index import UsearchIndex

#: Backends by name; use :func:`make_index` for the error that lists valid keys.
ANN_BACKENDS: dict[str, type[AnnIndex]] = {
    "hnsw": HnswIndex,
    "faiss-hnsw": FaissHnswIndex,
    "usearch": UsearchIndex,
    "exact": ExactIndex,
}
#: The backend a new library index is built with: hnswlib needs no optional package and
#: meets recall@10 >= 0.99 up to 100k shapes; near 1M choose faiss-hnsw (docs/PERFORMANCE.md).
DEFAULT_BACKEND = "hnsw"


def backend_class(backend: str) -> type[AnnIndex]:
    """The class registered as ``backend``; an unknown name raises the error that lists the valid ones."""
    if backend not in ANN_BACKENDS:
        raise UnknownKeyError("ANN backend", backend, ANN_BACKENDS)
    return ANN_BACKENDS[backend]


def make_index(backend: str, dim: int, **params: Any) -> AnnIndex:
    """A new empty index of the named backend (``params`` go to its constructor)."""
    return backend_class(backend)(dim, **params)


def empty_like(ann: AnnIndex) -> AnnIndex:
    """A new empty index of ``ann``'s backend, dimension and settings (to refill from the store)."""
    return make_index(ann.backend, ann.dim, **ann.config())


def accepted_params(backend: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """The set entries of ``wanted`` (``M``, ``ef_construction``, ``ef_search``) that ``backend`` takes.

    The graph backends take all three; ``exact`` takes none, so a knob given for
    it is dropped instead of failing.
    """
    accepted = inspect.signature(backend_class(backend)).parameters
    return {k: v for k, v in wanted.items() if v and k in accepted}


def load_index(path: str | Path) -> AnnIndex:
    """Load a saved index of whatever backend its manifest names."""
    name = read_manifest(path).get("backend")
    if name not in ANN_BACKENDS:
        raise IndexStateError(f"{path}: unknown vector index backend {name!r}")
    return ANN_BACKENDS[name].load(path)


__all__ = [
    "ANN_BACKENDS", "DEFAULT_BACKEND", "AnnIndex", "ExactIndex", "HnswIndex", "FaissHnswIndex", "UsearchIndex",
    "backend_class", "make_index", "empty_like", "accepted_params", "load_index", "read_manifest",
    "HNSW_M", "HNSW_EF_CONSTRUCTION", "HNSW_EF_SEARCH", "EXACT_BLOCK_FLOATS",
]
