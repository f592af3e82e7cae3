"""Brute-force k-NN (numpy): the exact twin of the HNSW backend, used to test recall.

It is the ground truth for recall tests and is good enough (and exact) for small libraries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ftspl.engine.errors import IndexStateError
from ftspl.engine.index.ann.base import (
    REBUILD,
    AnnIndex,
    as_ids,
    as_vectors,
    check_batch,
    check_k,
)

#: ExactIndex bounds the temporary distance matrix to about this many floats.
EXACT_BLOCK_FLOATS = 1 << 22


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

    def _has(self, key: int) -> bool:
        return key in self._row

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
        ids = as_ids(ids)
        vectors = as_vectors(vectors, self.dim) if len(ids) else np.zeros((0, self.dim), np.float32)
        check_batch(ids, vectors)
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
        for i in as_ids(ids).tolist():
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
        k = check_k(k)
        q = as_vectors(vectors, self.dim)
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
