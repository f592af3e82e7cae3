"""The faiss HNSW backend: faiss-cpu's ``IndexHNSWFlat`` behind the :class:`AnnIndex` verbs.

The backend for libraries near 1M shapes (``index add --ann-backend faiss-hnsw``): faiss picks AVX2 /
AVX-512 distance kernels at run time, and on the same M 32 / ef_construction
200 graph it answers in about half hnswlib's time. At 1M x 256 trained-like
vectors, one query at a time: recall@10 0.9945 in 1.55 ms at ef 448, 26x the
exact twin (``benchmarks/results/ann_1000000.json``; docs/PERFORMANCE.md, "A
1M-shape library"). faiss's HNSW cannot delete, so this class keeps the
mapping itself:

* every vector goes into a *slot* (faiss's sequential id); ``_labels`` maps a
  slot to the caller's id and a bitmap marks the live slots;
* ``remove`` clears a slot's bit; a query then passes the bitmap as an
  ``IDSelectorBitmap``, so dead slots still route the search but never come
  back. Re-adding an id (or replacing its vector) takes a fresh slot;
* once dead slots outnumber live ones (and there are at least
  :data:`COMPACT_MIN_DEAD`), the graph is rebuilt from the live vectors, so a
  churning library costs at most twice its size and each removal pays for
  about one re-insertion.

The payload is one file: the slot labels and live bits as ``.npy`` blocks,
then faiss's own index serialisation. Not thread-safe against writers: a
query may run beside other queries, never beside ``add``/``remove``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ftspl.engine.errors import IndexStateError
from ftspl.engine.index.ann.base import (
    REBUILD,
    as_ids,
    as_vectors,
    check_k,
    read_manifest,
)
from ftspl.engine.index.ann.graph import (
    GraphIndex,
    KeyedLive,
    drop_stale_payloads,
    huge_pages_for_new_memory,
    import_wheel,
)

log = logging.getLogger(__name__)

#: Graph degree and build beam (same as the hnswlib backend; see docs/PERFORMANCE.md).
FAISS_M = 32
FAISS_EF_CONSTRUCTION = 200
#: Size-aware query beam (:func:`ftspl.engine.index.ann.graph.auto_ef`): ef at 100k, ef at 1M.
#: Each is the smallest measured ef with recall@10 >= 0.993 (0.99 plus about 1.5 standard
#: errors of a 200-query estimate): 100k ef 128 -> 0.9995; 1M ef 384 -> 0.9925, 448 -> 0.9945.
FAISS_EF_SMALL = 128
FAISS_EF_LARGE = 448
#: Dead slots below this never trigger a rebuild.
COMPACT_MIN_DEAD = 1024


class FaissHnswIndex(KeyedLive, GraphIndex):
    """Approximate k-NN graph (faiss ``IndexHNSWFlat``, squared L2) with tombstones."""

    backend = "faiss-hnsw"
    payload_suffix = ".faiss"
    EF_SMALL, EF_LARGE = FAISS_EF_SMALL, FAISS_EF_LARGE

    def __init__(
        self,
        dim: int,
        M: int = FAISS_M,
        ef_construction: int = FAISS_EF_CONSTRUCTION,
        ef_search: int | None = None,
        *,
        _index: Any | None = None,
        _labels: np.ndarray | None = None,
        _live: np.ndarray | None = None,
    ) -> None:
        faiss = import_wheel("faiss", "faiss-cpu", self.backend)  # only needed when this backend is used

        super().__init__(dim, M, ef_construction, ef_search)
        if _index is None:
            _index = faiss.IndexHNSWFlat(self.dim, self.M)
            _index.hnsw.efConstruction = self.ef_construction
        self._index = _index
        n = int(_index.ntotal)
        self._labels = np.zeros(max(n, 64), np.int64)
        self._bits = np.zeros((len(self._labels) + 7) // 8, np.uint8)
        self._slot: dict[int, int] = {}
        if n:
            assert _labels is not None and _live is not None
            self._labels[:n] = _labels
            live_slots = np.flatnonzero(_live)
            self._set_bits(live_slots, True)
            self._slot = dict(zip(_labels[live_slots].tolist(), live_slots.tolist()))

    @property
    def dead(self) -> int:
        """Slots that hold a removed or replaced vector."""
        return int(self._index.ntotal) - len(self._slot)

    # ---- bookkeeping ----
    def _set_bits(self, slots: np.ndarray, on: bool) -> None:
        if len(slots) == 0:
            return
        slots = np.asarray(slots, np.int64)
        byte, mask = slots >> 3, (1 << (slots & 7)).astype(np.uint8)
        if on:
            np.bitwise_or.at(self._bits, byte, mask)
        else:
            np.bitwise_and.at(self._bits, byte, ~mask)

    def _reserve(self, n: int) -> None:
        if n <= len(self._labels):
            return
        cap = max(n, 2 * len(self._labels))
        labels = np.zeros(cap, np.int64)
        labels[: len(self._labels)] = self._labels
        bits = np.zeros((cap + 7) // 8, np.uint8)
        bits[: len(self._bits)] = self._bits
        self._labels, self._bits = labels, bits

    def _live_mask(self) -> np.ndarray:
        n = int(self._index.ntotal)
        return np.unpackbits(self._bits, bitorder="little")[:n].astype(bool)

    # ---- verbs ----
    @property
    def _keys(self) -> dict[int, int]:
        return self._slot

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        batch = self._batch(ids, vectors)
        if batch is None:
            return
        ids, vectors = batch
        old = [self._slot[i] for i in ids.tolist() if i in self._slot]
        start = int(self._index.ntotal)
        self._reserve(start + len(ids))
        self._index.add(vectors)
        slots = np.arange(start, start + len(ids))
        self._labels[slots] = ids
        self._set_bits(np.asarray(old, np.int64), False)
        self._set_bits(slots, True)
        self._slot.update(zip(ids.tolist(), slots.tolist()))
        self._maybe_compact()

    def remove(self, ids: np.ndarray) -> None:
        gone = [self._slot.pop(i) for i in as_ids(ids).tolist() if i in self._slot]
        self._set_bits(np.asarray(gone, np.int64), False)
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        dead = self.dead
        if dead < COMPACT_MIN_DEAD or dead <= len(self):
            return
        import faiss

        slots = np.flatnonzero(self._live_mask())
        log.info("faiss-hnsw: rebuilding the graph from %d live of %d slots", len(slots), self._index.ntotal)
        vectors = self._index.reconstruct_batch(slots) if len(slots) else np.zeros((0, self.dim), np.float32)
        labels = self._labels[slots]
        index = faiss.IndexHNSWFlat(self.dim, self.M)
        index.hnsw.efConstruction = self.ef_construction
        if len(slots):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._index = index
        self._labels = np.zeros(max(len(slots), 64), np.int64)
        self._labels[: len(slots)] = labels
        self._bits = np.zeros((len(self._labels) + 7) // 8, np.uint8)
        fresh = np.arange(len(slots))
        self._set_bits(fresh, True)
        self._slot = dict(zip(labels.tolist(), fresh.tolist()))

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        k = check_k(k)
        q = as_vectors(vectors, self.dim)
        kk = min(k, len(self))
        if kk == 0 or len(q) == 0:
            return np.zeros((len(q), kk), dtype=np.int64), np.zeros((len(q), kk), dtype=np.float32)
        # faiss does not widen the beam to k by itself: it returns fewer than k results
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, kk))
        sel = None
        if self.dead:
            sel = faiss.IDSelectorBitmap(int(self._index.ntotal), faiss.swig_ptr(self._bits))
            params.sel = sel
        d2, slots = self._index.search(q, kk, params=params)
        for row in np.flatnonzero((slots < 0).any(axis=1)):
            # Too few live nodes reachable in the beam (many removals): exhaustive
            # search of the stored vectors, live slots only (one query at a time,
            # so faiss computes each distance directly, not by the dot-product expansion).
            log.debug("faiss-hnsw query short of %d results; exhaustive fallback", kk)
            flat = faiss.downcast_index(self._index.storage)
            d2[row : row + 1], slots[row : row + 1] = flat.search(
                q[row : row + 1], kk, params=faiss.SearchParameters(sel=sel)
            )
        dist = np.sqrt(np.maximum(d2, 0.0)).astype(np.float32, copy=False)
        return self._labels[slots], dist

    # ---- persistence ----
    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        super().save(path, meta)
        drop_stale_payloads(path, self.payload_suffix, keep=read_manifest(path)["payload"])

    def _params(self) -> dict[str, Any]:
        return self.config()

    def _write_payload(self, path: Path) -> None:
        import faiss

        n = int(self._index.ntotal)
        with open(path, "wb") as fh:  # Python's writes raise on a full disk
            np.save(fh, self._labels[:n], allow_pickle=False)
            np.save(fh, self._live_mask(), allow_pickle=False)
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(fh.write))

    @classmethod
    def _from_payload(cls, payload: Path, manifest: dict[str, Any]) -> FaissHnswIndex:
        faiss = import_wheel("faiss", "faiss-cpu", cls.backend)

        params = manifest.get("params") or {}
        dim = int(manifest["dim"])
        try:
            with open(payload, "rb") as fh, huge_pages_for_new_memory():
                labels = np.load(fh, allow_pickle=False)
                live = np.load(fh, allow_pickle=False)
                raw = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
        except (OSError, ValueError, EOFError, RuntimeError) as exc:
            raise IndexStateError(f"{payload}: corrupt faiss HNSW index ({exc}); " + REBUILD) from None
        if not isinstance(raw, faiss.IndexHNSWFlat) or raw.d != dim:
            raise IndexStateError(f"{payload}: not a {dim}-d faiss HNSW index; " + REBUILD)
        n = int(raw.ntotal)
        if labels.dtype != np.int64 or live.dtype != np.bool_ or len(labels) != n or len(live) != n:
            raise IndexStateError(f"{payload}: faiss HNSW slots do not match the graph; " + REBUILD)
        live_ids = labels[live]
        if len(np.unique(live_ids)) != len(live_ids) or len(live_ids) != int(manifest.get("count", len(live_ids))):
            raise IndexStateError(f"{payload}: faiss HNSW index does not match its manifest; " + REBUILD)
        return cls(
            dim,
            M=int(params.get("M", raw.hnsw.nb_neighbors(1))),
            ef_construction=int(params.get("ef_construction", raw.hnsw.efConstruction)),
            ef_search=params.get("ef_search"),
            _index=raw,
            _labels=labels,
            _live=live,
        )
