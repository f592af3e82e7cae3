"""The ANN cache beside the store: brought up to the store's generation, or rebuilt from it, in one place.

SQLite is the source of truth; the ANN file is a derived cache saved with the
store generation it reflects. :func:`read_delta` reads, in one snapshot, what an
ANN at some generation lacks: the upserts and removals since then
(:meth:`~ftspl.engine.index.store.shapes.ShapeStore.changes_since`), or every
stored embedding when the ANN is missing, newer than the store (a store replaced
by ``--rebuild``) or too far behind. :func:`apply_delta` applies it: in place, or
into a fresh index of the same backend and settings. Every caller goes through
these two: opening the index for a write or a query (:meth:`AnnCache.open`), a
live reader following the writer (:mod:`ftspl.engine.index.reader`), and the
rebuild after a re-embed (:meth:`AnnCache.rebuild`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.errors import IndexStateError
from ftspl.engine.index.ann import DEFAULT_BACKEND, accepted_params, empty_like, load_index, make_index, read_manifest
from ftspl.engine.index.ann.base import AnnIndex
from ftspl.engine.index.config import IndexConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnDelta:
    """What brings an ANN to the store's ``generation``: changes since an earlier one, or the whole store."""

    generation: int
    ids: np.ndarray  #: upserted (or, when ``whole``, all) ids
    vectors: np.ndarray  #: their embeddings, (n, D) float32
    removed: np.ndarray  #: ids to drop (empty when ``whole``)
    whole: bool  #: ``ids`` are every stored shape: fill an empty index with them

    @property
    def changes(self) -> int:
        return len(self.ids) + len(self.removed)


def read_delta(store, since: int | None, whole_over: int | None = None) -> AnnDelta:
    """In one snapshot of ``store``: the changes after generation ``since``, or every stored embedding.

    The whole store comes back when ``since`` is None, when the store is older
    than ``since`` (logged), or when there are more than ``whole_over`` changes
    (building aside beats a long in-place update for a live reader).
    """
    with store.snapshot() as gen:
        if since is not None:
            try:
                ids, vecs, removed = store.changes_since(since)
            except IndexStateError as exc:  # the ANN is newer than its store
                log.warning("%s; rebuilding the ANN cache from SQLite", exc)
            else:
                if whole_over is None or len(ids) + len(removed) <= whole_over:
                    return AnnDelta(gen, ids, vecs, removed, whole=False)
        ids, vecs = store.all_embeddings()
    return AnnDelta(gen, ids, vecs, np.zeros(0, np.int64), whole=True)


def apply_delta(ann: AnnIndex, delta: AnnDelta) -> AnnIndex:
    """``ann`` brought to ``delta.generation``: itself, updated in place, or for a whole-store delta a fresh
    index of its backend and settings (``ann`` is then left as it was)."""
    target = empty_like(ann) if delta.whole else ann
    if len(delta.removed):
        target.remove(delta.removed)
    if len(delta.ids):
        target.add(delta.ids, delta.vectors)
    return target


class AnnCache:
    """The ANN file at ``path`` for ``dim``-d embeddings: opened caught up, saved with its generation."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim = Path(path), int(dim)

    def saved_generation(self) -> int | None:
        """The store generation the file was saved at (None: no readable file)."""
        try:
            return int(read_manifest(self.path).get("meta", {}).get("generation", -1))
        except IndexStateError:
            return None

    def open(self, store, cfg: IndexConfig | None = None) -> AnnIndex:
        """Load the file (whatever backend built it) and bring it up to the store's generation, in memory.

        A missing, unreadable or other-dimension file is rebuilt from the store,
        with ``cfg``'s backend and settings; ``cfg.ann_ef_search`` sets the query beam.
        """
        ann = None
        if self.path.exists():
            try:
                ann = load_index(self.path)
            except IndexStateError as exc:
                log.warning("%s; rebuilding the ANN cache from SQLite", exc)
            if ann is not None and (ann.dim != self.dim or int(ann.meta.get("generation", -1)) < 0):
                ann = None
        since = None if ann is None else int(ann.meta["generation"])
        if ann is None:
            cfg = cfg or IndexConfig()
            backend = cfg.ann_backend or DEFAULT_BACKEND
            ann = make_index(backend, self.dim, **accepted_params(backend, cfg.graph_params()))
        if cfg is not None and cfg.ann_ef_search:
            ann.ef_search = cfg.ann_ef_search
        delta = read_delta(store, since)
        ann = apply_delta(ann, delta)
        if delta.changes:
            log.info("HNSW cache caught up from generation %s: +%d -%d", since, len(delta.ids), len(delta.removed))
        return ann

    def save(self, ann: AnnIndex, store) -> None:
        """Save ``ann`` atomically as the state of the store's current generation."""
        ann.save(self.path, meta={"generation": store.generation()})

    def rebuild(self, store, stale_only: bool = False) -> None:
        """Build the file anew from the store's embeddings (same backend and settings as the old file, if any).

        ``stale_only``: only when the file is missing or behind the store.
        """
        if stale_only and self.saved_generation() == store.generation():
            return
        try:
            ann = load_index(self.path)
        except IndexStateError as exc:
            log.info("%s; building a new %s index", exc, DEFAULT_BACKEND)
            ann = make_index(DEFAULT_BACKEND, self.dim)
        if ann.dim != self.dim:  # a re-embed with a model of another size keeps the backend and settings
            ann = make_index(ann.backend, self.dim, **ann.config())
        self.save(apply_delta(ann, read_delta(store, None)), store)


__all__ = ["AnnCache", "AnnDelta", "apply_delta", "read_delta"]
