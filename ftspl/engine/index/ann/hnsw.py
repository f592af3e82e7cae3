"""The HNSW backend: hnswlib's approximate graph index behind the :class:`AnnIndex` verbs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ftspl.engine.errors import IndexStateError, WriteError
from ftspl.engine.index.ann.base import (
    REBUILD,
    as_ids,
    as_vectors,
    check_k,
)
from ftspl.engine.index.ann.graph import KeyedLive, ThreadedGraphIndex, huge_pages_for_new_memory

log = logging.getLogger(__name__)

#: HNSW defaults, measured on 100k x 256 vectors drawn around real trained FTSPL
#: embeddings (each a real shape's embedding + Gaussian noise of half the real
#: per-dimension spread; ``benchmarks/run.py``), one query at a time on a busy
#: 2-core machine:
#:   M=16, efc=200: ef 64 -> recall@10 0.956, ef 128 -> 0.995, ef 256 -> 0.9995
#:   M=32, efc=200: ef 64 -> 0.987 (0.61 ms), ef 128 -> 0.9995 (0.62 ms), ef 256 -> 1.000
#:   M=32, efc=400: no better than efc=200, slower queries.
#: So M=32 / efc=200 / ef=128. I.i.d. Gaussian vectors (no structure at all) stay
#: the unindexable worst case. ``ef_search`` is a query-time knob (free to change
#: after build, kept in the manifest). At 1M vectors the same graph gives recall@10
#: 0.936 at ef 128, 0.981 at 256, 0.9935 at 384 and 0.9965 at 512 (2.7 ms per query,
#: 15x the exact twin; ``benchmarks/results/ann_1000000.json``), so an index without an
#: explicit ``ef_search`` widens its beam with its size
#: (:func:`ftspl.engine.index.ann.graph.auto_ef`): ``HNSW_EF_SEARCH`` up to 100k vectors,
#: ``HNSW_EF_SEARCH_1M`` (the smallest measured ef with recall@10 >= 0.993) at 1M. The
#: faiss backend answers the same graph about twice as fast (``faiss_hnsw.py``).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
HNSW_EF_SEARCH_1M = 384
HNSW_INITIAL_CAPACITY = 1024


class HnswIndex(KeyedLive, ThreadedGraphIndex):
    """Approximate k-NN graph (hnswlib, space 'l2') that grows and forgets in place.

    * Capacity doubles (``resize_index``) when full, so no size is set up front.
    * ``remove`` marks labels deleted; new labels reuse deleted slots
      (``allow_replace_deleted``), so a churning library does not grow forever.
      Re-adding a removed id un-deletes its slot and overwrites the vector.
    * Query-time ``ef`` is ``max(ef_search, k)``: hnswlib cannot return k
      results from a beam narrower than k. ``ef_search=None`` (the default)
      sizes the beam from the index's size at each query.
    * hnswlib's file omits ``ef`` and which labels are deleted; the manifest
      keeps both. Not thread-safe: one index object per thread.
    """

    backend = "hnsw"
    payload_suffix = ".hnsw"
    EF_SMALL, EF_LARGE = HNSW_EF_SEARCH, HNSW_EF_SEARCH_1M

    def __init__(
        self,
        dim: int,
        M: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int | None = None,
        num_threads: int = -1,
        initial_capacity: int = HNSW_INITIAL_CAPACITY,
        seed: int = 100,
        *,
        _index: Any | None = None,
    ) -> None:
        import hnswlib  # imported here so ExactIndex works where the wheel is absent

        if initial_capacity < 1:
            raise ValueError("need initial_capacity >= 1")
        super().__init__(dim, M, ef_construction, ef_search, num_threads)
        self.seed = int(seed)
        if _index is None:
            _index = hnswlib.Index(space="l2", dim=self.dim)
            _index.init_index(
                max_elements=int(initial_capacity),
                M=self.M,
                ef_construction=self.ef_construction,
                random_seed=self.seed,
                allow_replace_deleted=True,
            )
        self._index = _index
        self._live: set[int] = set()
        self._deleted: set[int] = set()  # labels marked deleted whose slot is not reused yet

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    @property
    def _keys(self) -> set[int]:
        return self._live

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        batch = self._batch(ids, vectors)
        if batch is None:
            return
        ids, vectors = batch
        id_list = ids.tolist()
        known = np.fromiter((i in self._live or i in self._deleted for i in id_list), dtype=bool, count=len(ids))
        # Labels hnswlib still holds (live, or deleted but not yet overwritten) are
        # updated in place; a deleted one must be un-marked first (hnswlib refuses
        # to update a deleted element when slot reuse is on).
        if known.any():
            for i in ids[known].tolist():
                if i in self._deleted:
                    self._index.unmark_deleted(i)
                    self._deleted.discard(i)
                    self._live.add(i)
            self._index.add_items(vectors[known], ids[known], num_threads=self.num_threads)
        fresh = ~known
        if fresh.any():
            n_fresh = int(fresh.sum())
            reuse = min(n_fresh, len(self._deleted))
            need = self._index.get_current_count() + n_fresh - reuse
            if need > self.capacity:
                self._index.resize_index(max(need, 2 * self.capacity))
            # replace_deleted takes vacant (deleted) slots first; their old labels vanish.
            self._index.add_items(vectors[fresh], ids[fresh], num_threads=self.num_threads, replace_deleted=True)
            self._live.update(ids[fresh].tolist())
            if reuse:
                self._sync_deleted_after_reuse()

    def _sync_deleted_after_reuse(self) -> None:
        """Drop deleted labels whose slots hnswlib handed to new labels."""
        held = set(self._index.get_ids_list())
        self._deleted &= held

    def remove(self, ids: np.ndarray) -> None:
        for i in as_ids(ids).tolist():
            if i in self._live:
                self._index.mark_deleted(i)
                self._live.discard(i)
                self._deleted.add(i)

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        q = as_vectors(vectors, self.dim)
        kk = min(k, len(self))
        if kk == 0 or len(q) == 0:
            return np.zeros((len(q), kk), dtype=np.int64), np.zeros((len(q), kk), dtype=np.float32)
        ef = max(self.ef_search, kk)
        while True:
            self._index.set_ef(ef)
            try:
                labels, d2 = self._index.knn_query(q, k=kk, num_threads=self.num_threads)
                break
            except RuntimeError:
                # Too few reachable live nodes in the beam (many deletions): widen it.
                total = self._index.get_current_count()
                if ef >= total:
                    raise
                log.debug("hnsw query short of %d results at ef=%d; widening", kk, ef)
                ef = min(total, 4 * ef)
        dist = np.sqrt(np.maximum(d2, 0.0)).astype(np.float32, copy=False)
        return labels.astype(np.int64), dist

    def _params(self) -> dict[str, Any]:
        return {
            **self.config(),  # ef_search None: size-aware
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deleted": sorted(self._deleted),
        }

    def _write_payload(self, path: Path) -> None:
        self._index.save_index(str(path))
        # hnswlib's save_index ignores write errors (a full disk leaves a short file
        # that only fails on the next load), so check the size against the format's
        # floor: header + per element its level-0 links, vector, label, link-list size.
        n = self._index.element_count
        floor = 96 + n * (2 * self._index.M * 4 + 4 + self.dim * 4 + 8 + 4)
        size = path.stat().st_size
        if size < floor:
            raise WriteError(path, f"short write: {size} of at least {floor} bytes")

    @classmethod
    def _from_payload(cls, payload: Path, manifest: dict[str, Any]) -> "HnswIndex":
        import hnswlib

        params = manifest.get("params") or {}
        dim = int(manifest["dim"])
        raw = hnswlib.Index(space="l2", dim=dim)
        try:
            with huge_pages_for_new_memory():
                raw.load_index(str(payload), allow_replace_deleted=True)
        except RuntimeError as exc:
            raise IndexStateError(f"{payload}: corrupt HNSW index ({exc}); " + REBUILD) from None
        if raw.dim != dim:
            raise IndexStateError(f"{payload}: HNSW dim {raw.dim} != manifest dim {dim}; " + REBUILD)
        index = cls(
            dim,
            M=int(params.get("M", raw.M)),
            ef_construction=int(params.get("ef_construction", raw.ef_construction)),
            ef_search=params.get("ef_search"),
            num_threads=int(params.get("num_threads", -1)),
            seed=int(params.get("seed", 100)),
            _index=raw,
        )
        deleted = {int(i) for i in params.get("deleted", [])}
        held = set(raw.get_ids_list())
        index._deleted = deleted & held
        index._live = held - deleted
        if len(index._live) != int(manifest.get("count", len(index._live))):
            raise IndexStateError(f"{payload}: HNSW index does not match its manifest; " + REBUILD)
        return index
