"""The USearch backend: ``usearch.index.Index`` (HNSW, squared L2, float32) behind the :class:`AnnIndex` verbs.

USearch deletes natively (removed slots are reused by later adds) and picks
SIMD kernels at run time. It refuses a key that is already present, so a
replaced vector is removed first. Its file keeps the graph and vectors but not
the search and build beams; the manifest keeps those. The parameters carry the
same names as the other graph backends (``M`` is USearch's ``connectivity``,
``ef_construction`` its ``expansion_add``, ``ef_search`` its
``expansion_search``). Vectors are stored as float32 so distances are exact
(USearch's own default, bf16, would round them). Not thread-safe: the search
beam is a setting of the index.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ftspl.engine.errors import IndexStateError, WriteError
from ftspl.engine.index.ann.base import (
    REBUILD,
    as_ids,
    as_vectors,
    check_k,
    read_manifest,
)
from ftspl.engine.index.ann.graph import (
    ThreadedGraphIndex,
    drop_stale_payloads,
    huge_pages_for_new_memory,
    import_wheel,
)

log = logging.getLogger(__name__)

USEARCH_M = 32
USEARCH_EF_CONSTRUCTION = 200
#: Size-aware query beam (:func:`ftspl.engine.index.ann.graph.auto_ef`): ef at 100k, ef at 1M.
USEARCH_EF_SMALL = 128
USEARCH_EF_LARGE = 384
#: Inserts run in one thread while the graph is smaller than this: USearch's parallel inserts
#: into a young graph leave nodes unreachable (500 vectors, 4 threads, beam 500: 4% of the
#: top-10 differ from exact; one thread: none). Serial inserts up to here take about a second.
USEARCH_SERIAL_BELOW = 10_000


def _unpack(found: Any, nq: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys, squared distances (each (nq, k)) and result counts of a USearch answer.

    One query gives ``Matches`` trimmed to what was found; several give
    ``BatchMatches`` padded to ``k`` with ``counts``.
    """
    if hasattr(found, "counts"):
        keys = np.asarray(found.keys).reshape(nq, k)
        d2 = np.asarray(found.distances, dtype=np.float32).reshape(nq, k)
        return keys, d2, np.asarray(found.counts).reshape(nq)
    keys, d2 = np.zeros((1, k), np.uint64), np.zeros((1, k), np.float32)
    n = len(found.keys)
    keys[0, :n], d2[0, :n] = found.keys, found.distances
    return keys, d2, np.array([n])


class UsearchIndex(ThreadedGraphIndex):
    """Approximate k-NN graph (USearch, metric ``l2sq``, dtype ``f32``) that grows and forgets in place."""

    backend = "usearch"
    payload_suffix = ".usearch"
    EF_SMALL, EF_LARGE = USEARCH_EF_SMALL, USEARCH_EF_LARGE

    def __init__(
        self,
        dim: int,
        M: int = USEARCH_M,
        ef_construction: int = USEARCH_EF_CONSTRUCTION,
        ef_search: int | None = None,
        num_threads: int = -1,
        *,
        _index: Any | None = None,
    ) -> None:
        Index = import_wheel("usearch.index", "usearch", self.backend).Index  # only needed for this backend

        super().__init__(dim, M, ef_construction, ef_search, num_threads)
        if _index is None:
            _index = Index(
                ndim=self.dim, metric="l2sq", dtype="f32", connectivity=self.M, expansion_add=self.ef_construction
            )
        _index.expansion_add = self.ef_construction
        self._index = _index

    # ---- knobs ----
    def _threads(self, batch: int) -> int:
        if batch == 1:
            return 1
        return 0 if self._num_threads == -1 else self._num_threads  # usearch: 0 = all cores

    # ---- verbs ----
    def __len__(self) -> int:
        return len(self._index)

    def _has(self, key: int) -> bool:
        return bool(self._index.contains(key))

    def ids(self) -> np.ndarray:
        if len(self._index) == 0:
            return np.zeros(0, np.int64)
        return np.sort(np.asarray(self._index.keys, dtype=np.uint64).astype(np.int64))

    def _present(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self._index.contains(ids.astype(np.uint64)), dtype=bool).reshape(len(ids))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        batch = self._batch(ids, vectors)
        if batch is None:
            return
        ids, vectors = batch
        present = self._present(ids)
        if present.any():
            self._index.remove(ids[present].astype(np.uint64))
        keys = ids.astype(np.uint64)
        serial = max(0, min(len(ids), USEARCH_SERIAL_BELOW - len(self._index)))
        if serial:
            self._index.add(keys[:serial], vectors[:serial], threads=1)
        if serial < len(ids):
            self._index.add(keys[serial:], vectors[serial:], threads=self._threads(len(ids) - serial))

    def remove(self, ids: np.ndarray) -> None:
        ids = as_ids(ids)
        if len(ids) == 0:
            return
        present = self._present(ids)
        if present.any():
            self._index.remove(ids[present].astype(np.uint64))

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        q = as_vectors(vectors, self.dim)
        kk = min(k, len(self))
        if kk == 0 or len(q) == 0:
            return np.zeros((len(q), kk), dtype=np.int64), np.zeros((len(q), kk), dtype=np.float32)
        self._index.expansion_search = max(self.ef_search, kk)
        keys, d2, counts = _unpack(self._index.search(q, kk, threads=self._threads(len(q))), len(q), kk)
        short = counts < kk
        if short.any():
            # Too few live nodes reachable in the beam (many removals): exhaustive search.
            log.debug("usearch query short of %d results; exhaustive fallback", kk)
            n_short = int(short.sum())
            found = self._index.search(q[short], kk, exact=True, threads=self._threads(n_short))
            keys[short], d2[short], _ = _unpack(found, n_short, kk)
        dist = np.sqrt(np.maximum(d2, 0.0)).astype(np.float32, copy=False)
        return keys.astype(np.int64), dist

    # ---- persistence ----
    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        super().save(path, meta)
        drop_stale_payloads(path, self.payload_suffix, keep=read_manifest(path)["payload"])

    def _params(self) -> dict[str, Any]:
        return {**self.config(), "num_threads": self.num_threads}

    def _write_payload(self, path: Path) -> None:
        self._index.save(os.fspath(path))
        want, size = int(self._index.serialized_length), path.stat().st_size
        if size != want:  # USearch's writer may not report a short write (full disk)
            raise WriteError(path, f"short write: {size} of {want} bytes")

    @classmethod
    def _from_payload(cls, payload: Path, manifest: dict[str, Any]) -> UsearchIndex:
        Index = import_wheel("usearch.index", "usearch", cls.backend).Index
        params = manifest.get("params") or {}
        dim = int(manifest["dim"])
        try:
            with huge_pages_for_new_memory():
                raw = Index.restore(os.fspath(payload))
        except (OSError, ValueError, RuntimeError) as exc:
            raise IndexStateError(f"{payload}: corrupt USearch index ({exc}); " + REBUILD) from None
        if (
            raw is None
            or raw.ndim != dim
            or str(raw.dtype).lower().rsplit(".", 1)[-1] != "f32"
            or str(raw.metric).lower().rsplit(".", 1)[-1] != "l2sq"
        ):
            raise IndexStateError(f"{payload}: not a {dim}-d float32 squared-L2 USearch index; " + REBUILD)
        if len(raw) != int(manifest.get("count", len(raw))):
            raise IndexStateError(f"{payload}: USearch index does not match its manifest; " + REBUILD)
        return cls(
            dim,
            M=int(params.get("M", raw.connectivity)),
            ef_construction=int(params.get("ef_construction", raw.expansion_add)),
            ef_search=params.get("ef_search"),
            num_threads=int(params.get("num_threads", -1)),
            _index=raw,
        )
