"""Nearest-neighbour indexes over shape embeddings, with few verbs.

Two backends share one interface (``add``, ``remove``, ``query``, ``save``,
``load``, ``len``, ``in``, ``ids``) so the engine can swap them by name:

* :class:`HnswIndex` wraps ``hnswlib`` (the ``chroma-hnswlib`` wheel): an
  approximate graph index: about 0.9 ms per query at 100k shapes and 2.5 ms at 1M
  here (ef 128; exact search takes 9.4 and 80 ms; ``benchmarks/run.py``).
* :class:`ExactIndex` is its brute-force numpy twin. It is the ground truth for
  recall tests and is good enough (and exact) for small libraries.

Both store L2-normalised embeddings and report the *Euclidean* distance
(float32). Ids are int64 labels chosen by the caller: the SQLite store's row
ids, so a query result maps straight back to shape metadata.

On disk an index is a small JSON *manifest* at the path the caller names, plus
one payload file next to it whose name carries a random token
(``<name>.<token>.hnsw`` or ``.npz``). ``save`` writes and fsyncs the new payload
under a fresh name, then atomically replaces the manifest: that single
``os.replace`` is the commit point, so a crash or error at any moment leaves
either the old index or the new one, never a mix. Superseded payloads are
deleted after the commit. The manifest also carries caller metadata (e.g. the
store generation the index was built from) readable without loading the
payload (:func:`read_manifest`).

The HNSW index is a derived, rebuildable cache; SQLite is the source of truth.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ftspl.engine.atomic import atomic_write_bytes, fsync_file
from ftspl.engine.errors import IndexStateError, UnknownKeyError, WriteError

log = logging.getLogger(__name__)

REBUILD = "rebuild with `ftspl index add --rebuild`"

MANIFEST_FORMAT = "ftspl-ann"
MANIFEST_VERSION = 1

#: HNSW defaults, measured on 100k x 256 vectors drawn around real trained FTSPL
#: embeddings (each a real shape's embedding + Gaussian noise of half the real
#: per-dimension spread; ``benchmarks/run.py``), one query at a time on a busy
#: 2-core machine:
#:   M=16, efc=200: ef 64 -> recall@10 0.956, ef 128 -> 0.995, ef 256 -> 0.9995
#:   M=32, efc=200: ef 64 -> 0.987 (0.61 ms), ef 128 -> 0.9995 (0.62 ms), ef 256 -> 1.000
#:   M=32, efc=400: no better than efc=200, slower queries.
#: So M=32 / efc=200 / ef=128. I.i.d. Gaussian vectors (no structure at all) stay
#: the unindexable worst case. ``ef_search`` is a query-time knob (free to change
#: after build, kept in the manifest); raise it for more recall. At 1M vectors the
#: same graph gives recall@10 0.931 at ef 128, 0.984 at 256 and 0.996 at 512
#: (``benchmarks/results/ann_1000000.json``): libraries near 1M want ``--ef 512``.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
HNSW_INITIAL_CAPACITY = 1024

#: ExactIndex bounds the temporary distance matrix to about this many floats.
EXACT_BLOCK_FLOATS = 1 << 22


# --------------------------------------------------------------------------
# Input validation shared by both backends
# --------------------------------------------------------------------------
def _as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Ids as a 1-d int64 array; negative ids are refused (hnswlib labels are unsigned)."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be a 1-d integer array, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if (arr < 0).any():
        raise ValueError("ids must be non-negative")
    return arr


def _as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Vectors as a C-contiguous float32 (n, dim) matrix; a 1-d vector is one row."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {np.shape(vectors)}")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinite values")
    return np.ascontiguousarray(arr)


def _check_batch(ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids within one add() call must be unique")


def _check_k(k: int) -> int:
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k




def read_manifest(path: str | Path) -> dict[str, Any]:
    """The JSON manifest of a saved index (backend, params, ``meta``), without the payload.

    Cheap: lets the engine compare ``meta`` (e.g. the store generation the index
    was built from) before deciding to load or rebuild.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexStateError(f"{path}: no vector index here; build it with `ftspl index add`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexStateError(
            f"{path}: unreadable vector index manifest ({exc}); " + REBUILD
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise IndexStateError(f"{path}: not an ftspl vector index; " + REBUILD)
    if manifest.get("version", 0) > MANIFEST_VERSION:
        raise IndexStateError(f"{path}: vector index written by a newer ftspl; upgrade ftspl or rebuild")
    return manifest


def _payload_path(path: Path, manifest: dict[str, Any]) -> Path:
    name = manifest.get("payload")
    if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
        raise IndexStateError(f"{path}: vector index manifest names no payload; " + REBUILD)
    payload = path.with_name(name)
    if not payload.is_file():
        raise IndexStateError(f"{payload}: vector index payload is missing; " + REBUILD)
    return payload


def _stale_payloads(path: Path, keep: str) -> Iterator[Path]:
    """Payload files of earlier saves of ``path`` (and interrupted ones), except ``keep``."""
    pattern = re.compile(re.escape(path.name) + r"\.[0-9a-f]{16}\.(hnsw|npz)")
    for cand in path.parent.iterdir():
        if cand.name != keep and pattern.fullmatch(cand.name):
            yield cand


# --------------------------------------------------------------------------
# Common interface
# --------------------------------------------------------------------------
class AnnIndex(ABC):
    """The verbs every backend offers. ``meta`` travels with ``save``/``load``."""

    backend: ClassVar[str]
    payload_suffix: ClassVar[str]

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        #: free-form JSON-able metadata saved in the manifest (e.g. store generation)
        self.meta: dict[str, Any] = {}

    # ---- verbs ----
    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors under ``ids``; an id already present is replaced."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Forget ``ids``; ids that are not present are ignored."""

    @abstractmethod
    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ids (int64) and Euclidean distances (float32), each (nq, min(k, len))."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """All live ids, sorted ascending (int64)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, id_: object) -> bool: ...

    # ---- persistence ----
    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """Backend parameters for the manifest."""

    @abstractmethod
    def _write_payload(self, path: Path) -> None:
        """Write the payload (vectors / graph) to ``path`` (not yet fsynced)."""

    @classmethod
    @abstractmethod
    def _from_payload(cls, payload: Path, manifest: dict[str, Any]) -> "AnnIndex":
        """Rebuild an instance from a payload file and its manifest."""

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Save atomically: the manifest at ``path`` is replaced only once the payload is durable.

        ``meta`` (JSON-able) replaces ``self.meta`` and is stored in the manifest.
        """
        path = Path(path)
        if meta is not None:
            self.meta = dict(meta)
        token = secrets.token_hex(8)
        payload = path.with_name(f"{path.name}.{token}{self.payload_suffix}")
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "backend": self.backend,
            "dim": self.dim,
            "count": len(self),
            "payload": payload.name,
            "params": self._params(),
            "meta": self.meta,
        }
        blob = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        try:
            self._write_payload(payload)
            fsync_file(payload)
            atomic_write_bytes(path, blob)  # the commit point
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                payload.unlink()
            raise
        for stale in _stale_payloads(path, keep=payload.name):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    @classmethod
    def load(cls, path: str | Path) -> "AnnIndex":
        """Load an index saved by ``save``; refuses a manifest of another backend."""
        path = Path(path)
        manifest = read_manifest(path)
        if cls is not AnnIndex and manifest.get("backend") != cls.backend:
            raise IndexStateError(
                f"{path}: vector index backend is {manifest.get('backend')!r}, not {cls.backend!r}; "
                "rebuild with `ftspl index add --rebuild`"
            )
        backend = ANN_BACKENDS.get(manifest.get("backend"))  # type: ignore[arg-type]
        if backend is None:
            raise IndexStateError(f"{path}: unknown vector index backend {manifest.get('backend')!r}")
        for attempt in range(3):
            try:
                payload = _payload_path(path, manifest)
                break
            except IndexStateError:
                # A writer may have committed a newer save and deleted this payload
                # between our two reads: follow the fresh manifest.
                fresh = read_manifest(path)
                if attempt == 2 or fresh.get("payload") == manifest.get("payload"):
                    raise
                manifest = fresh
        index = backend._from_payload(payload, manifest)
        index.meta = dict(manifest.get("meta") or {})
        return index


# --------------------------------------------------------------------------
# Exact (brute force)
# --------------------------------------------------------------------------
class ExactIndex(AnnIndex):
    """Brute-force k-NN in float32; the reference for recall and fine for small sets.

    Rows live in a growable matrix with swap-with-last removal, so add/remove
    cost O(batch) and no Python loop ever touches every row.
    """

    backend = "exact"
    payload_suffix = ".npz"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._norms = np.zeros(0, dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._n = 0
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return self._n

    def __contains__(self, id_: object) -> bool:
        try:
            return int(id_) in self._row  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def ids(self) -> np.ndarray:
        return np.sort(self._ids[: self._n])

    def _reserve(self, n: int) -> None:
        cap = len(self._vectors)
        if n <= cap:
            return
        new_cap = max(n, 2 * cap, 64)
        vec = np.zeros((new_cap, self.dim), dtype=np.float32)
        vec[: self._n] = self._vectors[: self._n]
        norms = np.zeros(new_cap, dtype=np.float32)
        norms[: self._n] = self._norms[: self._n]
        ids = np.zeros(new_cap, dtype=np.int64)
        ids[: self._n] = self._ids[: self._n]
        self._vectors, self._norms, self._ids = vec, norms, ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = _as_ids(ids)
        vectors = _as_vectors(vectors, self.dim) if len(ids) else np.zeros((0, self.dim), np.float32)
        _check_batch(ids, vectors)
        rows = np.fromiter((self._row.get(int(i), -1) for i in ids), dtype=np.int64, count=len(ids))
        fresh = rows < 0
        n_new = int(fresh.sum())
        self._reserve(self._n + n_new)
        rows[fresh] = np.arange(self._n, self._n + n_new)
        for i, r in zip(ids[fresh].tolist(), rows[fresh].tolist()):
            self._row[i] = r
        self._n += n_new
        self._vectors[rows] = vectors
        self._norms[rows] = np.einsum("ij,ij->i", vectors, vectors)
        self._ids[rows] = ids

    def remove(self, ids: np.ndarray) -> None:
        for i in _as_ids(ids).tolist():
            row = self._row.pop(i, None)
            if row is None:
                continue
            last = self._n - 1
            if row != last:
                moved = int(self._ids[last])
                self._vectors[row] = self._vectors[last]
                self._norms[row] = self._norms[last]
                self._ids[row] = moved
                self._row[moved] = row
            self._n = last

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = _check_k(k)
        q = _as_vectors(vectors, self.dim)
        kk = min(k, self._n)
        out_ids = np.zeros((len(q), kk), dtype=np.int64)
        out_d = np.zeros((len(q), kk), dtype=np.float32)
        if kk == 0 or len(q) == 0:
            return out_ids, out_d
        # Bound the (queries x rows) distance block to ~EXACT_BLOCK_FLOATS floats.
        q_block = max(1, min(len(q), 256))
        r_block = max(kk, EXACT_BLOCK_FLOATS // q_block)
        data, norms, labels = self._vectors[: self._n], self._norms[: self._n], self._ids[: self._n]
        for qs in range(0, len(q), q_block):
            qb = q[qs : qs + q_block]
            qn = np.einsum("ij,ij->i", qb, qb)[:, None]
            best_d = np.full((len(qb), 0), np.inf, dtype=np.float32)
            best_r = np.zeros((len(qb), 0), dtype=np.int64)
            for rs in range(0, self._n, r_block):
                d2 = qb @ data[rs : rs + r_block].T
                d2 *= -2.0
                d2 += norms[None, rs : rs + r_block]
                d2 += qn
                if d2.shape[1] > kk:  # keep this block's k best before merging
                    part = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
                    blk_d, blk_r = np.take_along_axis(d2, part, axis=1), rs + part
                else:
                    blk_d = d2
                    blk_r = np.broadcast_to(np.arange(rs, rs + d2.shape[1]), d2.shape)
                best_d = np.concatenate([best_d, blk_d], axis=1)
                best_r = np.concatenate([best_r, blk_r], axis=1)
                if best_d.shape[1] > kk:
                    part = np.argpartition(best_d, kk - 1, axis=1)[:, :kk]
                    best_d = np.take_along_axis(best_d, part, axis=1)
                    best_r = np.take_along_axis(best_r, part, axis=1)
            # The expansion loses precision for near neighbours (cancellation), so
            # the k survivors get their distance recomputed directly, in chunks.
            step = max(1, EXACT_BLOCK_FLOATS // (kk * self.dim))
            for j in range(0, len(qb), step):
                diff = data[best_r[j : j + step]] - qb[j : j + step, None, :]
                best_d[j : j + step] = np.einsum("qkd,qkd->qk", diff, diff)
            best_i = labels[best_r]
            # Stable order: distance, then id, so equal distances rank deterministically.
            order = np.lexsort((best_i, best_d), axis=-1)
            out_ids[qs : qs + len(qb)] = np.take_along_axis(best_i, order, axis=1)
            out_d[qs : qs + len(qb)] = np.sqrt(np.take_along_axis(best_d, order, axis=1))
        return out_ids, out_d

    def _params(self) -> dict[str, Any]:
        return {}

    def _write_payload(self, path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, ids=self._ids[: self._n], vectors=self._vectors[: self._n])

    @classmethod
    def _from_payload(cls, payload: Path, manifest: dict[str, Any]) -> "ExactIndex":
        try:
            with np.load(payload, allow_pickle=False) as npz:
                ids, vectors = npz["ids"], npz["vectors"]
        except (OSError, ValueError, KeyError) as exc:
            raise IndexStateError(f"{payload}: corrupt vector index payload ({exc}); " + REBUILD) from None
        index = cls(int(manifest["dim"]))
        try:
            index.add(ids, vectors)
        except ValueError as exc:
            raise IndexStateError(f"{payload}: corrupt vector index payload ({exc}); " + REBUILD) from None
        return index


# --------------------------------------------------------------------------
# HNSW (hnswlib)
# --------------------------------------------------------------------------
class HnswIndex(AnnIndex):
    """Approximate k-NN graph (hnswlib, space 'l2') that grows and forgets in place.

    * Capacity doubles (``resize_index``) when full, so no size is set up front.
    * ``remove`` marks labels deleted; new labels reuse deleted slots
      (``allow_replace_deleted``), so a churning library does not grow forever.
      Re-adding a removed id un-deletes its slot and overwrites the vector.
    * Query-time ``ef`` is ``max(ef_search, k)``: hnswlib cannot return k
      results from a beam narrower than k.
    * hnswlib's file omits ``ef`` and which labels are deleted; the manifest
      keeps both. Not thread-safe: one index object per thread.
    """

    backend = "hnsw"
    payload_suffix = ".hnsw"

    def __init__(
        self,
        dim: int,
        M: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = HNSW_EF_SEARCH,
        num_threads: int = -1,
        initial_capacity: int = HNSW_INITIAL_CAPACITY,
        seed: int = 100,
        *,
        _index: Any | None = None,
    ) -> None:
        import hnswlib  # imported here so ExactIndex works where the wheel is absent

        super().__init__(dim)
        if M < 2 or ef_construction < 1 or ef_search < 1 or initial_capacity < 1:
            raise ValueError("need M >= 2, ef_construction >= 1, ef_search >= 1, initial_capacity >= 1")
        self.M, self.ef_construction, self.ef_search = int(M), int(ef_construction), int(ef_search)
        self.num_threads = int(num_threads)
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
    def num_threads(self) -> int:
        """hnswlib worker threads for add and query (-1: all cores)."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        value = int(value)
        if value == 0 or value < -1:
            raise ValueError("num_threads must be -1 (all cores) or >= 1")
        self._num_threads = value

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, id_: object) -> bool:
        try:
            return int(id_) in self._live  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def ids(self) -> np.ndarray:
        return np.sort(np.fromiter(self._live, dtype=np.int64, count=len(self._live)))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = _as_ids(ids)
        if len(ids) == 0:
            return
        vectors = _as_vectors(vectors, self.dim)
        _check_batch(ids, vectors)
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
        for i in _as_ids(ids).tolist():
            if i in self._live:
                self._index.mark_deleted(i)
                self._live.discard(i)
                self._deleted.add(i)

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = _check_k(k)
        q = _as_vectors(vectors, self.dim)
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
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
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
            raw.load_index(str(payload), allow_replace_deleted=True)
        except RuntimeError as exc:
            raise IndexStateError(f"{payload}: corrupt HNSW index ({exc}); " + REBUILD) from None
        if raw.dim != dim:
            raise IndexStateError(f"{payload}: HNSW dim {raw.dim} != manifest dim {dim}; " + REBUILD)
        index = cls(
            dim,
            M=int(params.get("M", raw.M)),
            ef_construction=int(params.get("ef_construction", raw.ef_construction)),
            ef_search=int(params.get("ef_search", HNSW_EF_SEARCH)),
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


#: Backends by name; use :func:`make_index` for the error that lists valid keys.
ANN_BACKENDS: dict[str, type[AnnIndex]] = {"hnsw": HnswIndex, "exact": ExactIndex}


def make_index(backend: str, dim: int, **params: Any) -> AnnIndex:
    """A new empty index of the named backend (``params`` go to its constructor)."""
    if backend not in ANN_BACKENDS:
        raise UnknownKeyError("ANN backend", backend, ANN_BACKENDS)
    return ANN_BACKENDS[backend](dim, **params)


def load_index(path: str | Path) -> AnnIndex:
    """Load a saved index of whatever backend its manifest names."""
    return AnnIndex.load(path)
